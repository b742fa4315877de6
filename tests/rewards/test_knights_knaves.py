"""Logic-RL's Knights and Knaves reward: the paper's values (Section 2.2) on hand-written
responses; format +1 / -1, answer +2 / -1.5 / -2."""

import pytest

from r1jax.rewards import REWARD_FUNCTIONS, RewardPool
from r1jax.rewards.logic import (knights_knaves_score, logic_format_ok, logic_format_reward,
                                 parse_identities, parse_solution_text_format)

GOLD = "(1) Zoey is a knight\n(2) Oliver is a knave\n(3) Ethan is a knight"
THINK = "<think>If Zoey lied, Oliver would be a knight... so Zoey tells the truth.</think>"


def response(answer: str, think: str = THINK) -> str:
    return f"{think}<answer>{answer}</answer>"


def test_gold_parses_to_every_person():
    assert parse_solution_text_format(GOLD) == {"Zoey": "knight", "Oliver": "knave",
                                                "Ethan": "knight"}


@pytest.mark.parametrize("answer", [
    "(1) Zoey is a knight\n(2) Oliver is a knave\n(3) Ethan is a knight",   # gold layout
    "(1) Zoey is a knight (2) Oliver is a knave (3) Ethan is a knight",     # one line
    "Ethan is a Knight, zoey is a KNIGHT, and Oliver is a knave.",          # order, case
])
def test_fully_correct_answer_scores_2_and_format_1(answer):
    text = response(answer)
    assert knights_knaves_score(text, GOLD) == 2.0
    assert logic_format_reward(text) == 1.0


@pytest.mark.parametrize("answer", [
    "(1) Zoey is a knight (2) Oliver is a knight (3) Ethan is a knight",    # one wrong
    "(1) Zoey is a knave (2) Oliver is a knight (3) Ethan is a knave",      # all wrong
])
def test_parsed_but_wrong_answer_scores_minus_1_5(answer):
    assert knights_knaves_score(response(answer), GOLD) == -1.5


@pytest.mark.parametrize("answer", [
    "(1) Zoey is a knight (2) Oliver is a knave",                            # Ethan missing
    "(1) Zoey is a knight (2) Oliver is a knave (3) Ethan is a knight or a knave",  # hedge
    "Zoey: knight, Oliver: knave, Ethan: knight",                            # no "is a"
    "(1) Zoey is a knight (2) Oliver is a knave (3) Ethan is a knight. All knights agree.",
    "",                                                                      # empty answer
])
def test_unparseable_answer_scores_minus_2(answer):
    assert knights_knaves_score(response(answer), GOLD) == -2.0


RIGHT = "(1) Zoey is a knight (2) Oliver is a knave (3) Ethan is a knight"


@pytest.mark.parametrize("text", [
    RIGHT,                                                        # no tags at all
    f"<answer>{RIGHT}</answer>",                                  # no think block
    f"<answer>{RIGHT}</answer>{THINK}",                           # answer before think
    f"{THINK}<think>again</think><answer>{RIGHT}</answer>",       # two think blocks
    f"{THINK}<answer>draft</answer><answer>{RIGHT}</answer>",     # two answers (hedging)
    f"{THINK}<answer>{RIGHT}",                                    # unclosed answer
    f"</think><think>x<answer>{RIGHT}</answer>",                  # think tags swapped
])
def test_malformed_response_scores_format_minus_1_and_answer_minus_2(text):
    assert not logic_format_ok(text)
    assert logic_format_reward(text) == -1.0
    # The released scorer only reads answers of well-formed responses.
    assert knights_knaves_score(text, GOLD) == -2.0


def test_text_around_the_tags_is_allowed_as_in_the_released_scorer():
    text = "Sure.\n" + response(RIGHT) + "\nDone."
    assert logic_format_reward(text) == 1.0 and knights_knaves_score(text, GOLD) == 2.0


def test_require_format_false_scores_the_last_answer_of_any_response():
    text = f"<answer>(1) Zoey is a knave (2) Oliver is a knave (3) Ethan is a knave</answer>" \
           f"<answer>{RIGHT}</answer>"
    assert knights_knaves_score(text, GOLD) == -2.0
    assert knights_knaves_score(text, GOLD, require_format=False) == 2.0
    assert knights_knaves_score("no answer", GOLD, require_format=False) == -2.0


def test_names_match_whole_words_only():
    # "Ann" must not be read out of "Anna is a knave".
    gold = "(1) Ann is a knight\n(2) Anna is a knave"
    assert parse_identities("Anna is a knave, Ann is a knight", ["Ann", "Anna"]) == {
        "Ann": "knight", "Anna": "knave"}
    assert knights_knaves_score(response("Anna is a knave and Bob is a knight"), gold) == -2.0


def test_gold_without_people_is_an_error():
    with pytest.raises(ValueError, match="names no knight"):
        knights_knaves_score(response(RIGHT), "no roles here")


def test_registered_functions_see_the_template_prefix():
    example = {"answer": GOLD, "completion_prefix": "<think>"}
    completion = "Zoey is honest.</think><answer>" + RIGHT + "</answer>"
    assert REWARD_FUNCTIONS["logic_format"](completion, example, None) == 1.0
    assert REWARD_FUNCTIONS["knights_knaves"](completion, example, None) == 2.0
    # Without the prefix the same completion lacks <think>: format -1, answer -2.
    assert REWARD_FUNCTIONS["logic_format"](completion, {"answer": GOLD}, None) == -1.0
    assert REWARD_FUNCTIONS["knights_knaves"](completion, {"answer": GOLD}, None) == -2.0


def test_pool_total_is_format_plus_answer():
    wrong = "(1) Zoey is a knave (2) Oliver is a knave (3) Ethan is a knight"
    completions = [response(RIGHT), response(wrong), RIGHT]
    examples = [{"answer": GOLD}] * 3
    with RewardPool([("logic_format", 1.0, {}), ("knights_knaves", 1.0, {})],
                    num_workers=1, timeout_s=30) as pool:
        result = pool.score(completions, examples)
    assert list(result.total) == [3.0, -0.5, -3.0]
    assert list(result.per_function["knights_knaves"]) == [2.0, -1.5, -2.0]
