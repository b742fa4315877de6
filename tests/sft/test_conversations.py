"""Conversation layouts of the public SFT sets, each on hand-written rows in that layout."""

import json

import pytest

from r1jax.data.conversations import load_conversations
from r1jax.data.sources import DataError

U, A = "What is 2+3?", "<think>2+3=5</think> The answer is 5."
PAIR = [{"role": "user", "content": U}, {"role": "assistant", "content": A}]
SYSTEM = "You are a careful reasoner."

CASES = {
    # OpenR1-Math-220k: problem / solution / messages (the kept generation as a chat).
    "openr1_math": ({"problem": U, "solution": "5", "messages": PAIR}, PAIR),
    # OpenThoughts-114k / Bespoke-Stratos-17k: a system prompt and ShareGPT turns.
    "openthoughts": ({"system": SYSTEM, "conversations": [{"from": "user", "value": U},
                                                          {"from": "assistant", "value": A}]},
                     [{"role": "system", "content": SYSTEM}] + PAIR),
    "bespoke_stratos": ({"system": SYSTEM, "conversations": [{"from": "human", "value": U},
                                                             {"from": "gpt", "value": A}]},
                        [{"role": "system", "content": SYSTEM}] + PAIR),
    # Light-R1-SFTData: ShareGPT turns, no system prompt.
    "light_r1": ({"conversations": [{"from": "user", "value": U},
                                    {"from": "assistant", "value": A}]}, PAIR),
    # s1K-1.1: question, the thinking trajectory and the attempt.
    "s1k": ({"question": U, "deepseek_thinking_trajectory": " 2+3=5 ",
             "deepseek_attempt": "The answer is 5.", "solution": "5"},
            [{"role": "user", "content": U},
             {"role": "assistant", "content": "<think>\n2+3=5\n</think>\n\nThe answer is 5."}]),
    # LIMO: question / solution / answer.
    "limo": ({"question": U, "solution": A, "answer": "5"}, PAIR),
}


def write(tmp_path, rows, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("recipe", CASES)
def test_each_public_layout_becomes_messages(tmp_path, recipe):
    row, expected = CASES[recipe]
    examples, stats = load_conversations(write(tmp_path, [row, row]), recipe)
    assert [e["messages"] for e in examples] == [expected, expected]
    assert [e["id"] for e in examples] == [1, 2] and stats.kept == 2
    auto, _ = load_conversations(write(tmp_path, [row]), "auto") if recipe not in (
        "s1k", "limo") else (None, None)
    if auto is not None:
        assert auto[0]["messages"] == expected


def test_prompt_response_fields_and_bad_rows_are_counted(tmp_path):
    rows = [{"q": U, "a": A}, {"q": U}, {"q": U, "a": A, "sys": SYSTEM}]
    examples, stats = load_conversations(write(tmp_path, rows), "prompt_response",
                                         {"prompt": "q", "response": "a", "system": "sys"})
    assert [e["messages"] for e in examples] == [PAIR, [{"role": "system",
                                                         "content": SYSTEM}] + PAIR]
    assert stats.kept == 2 and dict(stats.skipped) == {"missing_field": 1}
    with pytest.raises(DataError, match="line 2"):
        load_conversations(write(tmp_path, rows), "prompt_response",
                           {"prompt": "q", "response": "a"}, strict=True)
    bad = [{"messages": [{"role": "user", "content": U}]},
           {"conversations": [{"from": "alien", "value": "x"}]}]
    with pytest.raises(DataError, match="no usable rows"):
        load_conversations(write(tmp_path, bad), "auto")
    with pytest.raises(ValueError, match="unknown conversation layout"):
        load_conversations(write(tmp_path, rows), "alpaca")
