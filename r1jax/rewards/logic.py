"""Logic-RL's rule-based rewards for Knights and Knaves puzzles (no jax import).

Xie et al. 2025, "Logic-RL: Unleashing LLM Reasoning with Rule-Based Reinforcement Learning"
(arXiv 2502.14768), Section 2.2 "Rule Based Reward Modeling", scores a response with the sum
of two terms:

    format:  +1 if the response is <think>...</think><answer>...</answer> (each tag exactly
             once, in that order), else -1
    answer:  +2 if the identities in the answer fully match the ground truth,
             -1.5 if the answer parses but is (partially) wrong,
             -2 if the answer cannot be parsed or is missing

Both rules follow the paper's released scorer (Logic-RL, verl/utils/reward_score/kk.py):

- the format check counts each of the four tags (exactly one of each) and requires
  `<think>` < `</think>` < `<answer>` < `</answer>` by position; text around the tags is
  allowed;
- the answer is the stripped content of the last `<answer>...</answer>`; it is scored only
  when the format is correct (a malformed response gets -2 whatever its answer says);
- it parses when the words "knight" + "knave" occur exactly once per person (so a hedged
  "Zoey is a knight or a knave" does not parse) and every person is named as
  "<Name> is a knight" / "<Name> is a knave" (case-insensitive), e.g.
  "(1) Zoey is a knight (2) Oliver is a knave";
- the ground truth is the K&K dataset's `solution_text_format`: one "(i) Name is a
  knight/knave" line per person.

The total of a correct, well-formatted response is 3; of a wrong but well-formatted one -0.5;
of a malformed one -3 (configs add `logic_format` and `knights_knaves` with weight 1 each).
"""

from __future__ import annotations

import re
from typing import Mapping, Optional

FORMAT_CORRECT = 1.0
FORMAT_WRONG = -1.0
ANSWER_CORRECT = 2.0
ANSWER_WRONG = -1.5
ANSWER_UNPARSED = -2.0

_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
# One gold line: the first purely alphabetic word is the name, then the role word.
_GOLD_LINE = re.compile(r"\b([A-Za-z]+)\b.*?\b(knight|knave)\b", re.IGNORECASE)


def logic_format_ok(text: str) -> bool:
    """True when each of the four tags occurs exactly once, in think-then-answer order."""
    if any(text.count(tag) != 1 for tag in _TAGS):
        return False
    positions = [text.find(tag) for tag in _TAGS]
    return positions == sorted(positions)


def logic_format_reward(text: str, *, correct: float = FORMAT_CORRECT,
                        wrong: float = FORMAT_WRONG) -> float:
    """Logic-RL's format score: `correct` (+1) when `logic_format_ok`, else `wrong` (-1).

    Args:
      text: the response, including any text the prompt already opened it with ("<think>").
    """
    return correct if logic_format_ok(text) else wrong


def parse_solution_text_format(gold: str) -> dict[str, str]:
    """Name -> "knight" / "knave" from a K&K `solution_text_format` ("(1) Zoey is a knight\\n...").

    Lines without a name and a role word are ignored.
    """
    roles = {}
    for line in gold.splitlines():
        match = _GOLD_LINE.search(line.strip())
        if match:
            roles[match.group(1)] = match.group(2).lower()
    return roles


def last_answer(text: str) -> Optional[str]:
    """Stripped content of the last `<answer>...</answer>`; None when there is none or empty."""
    matches = _ANSWER.findall(text)
    if not matches or not matches[-1].strip():
        return None
    return matches[-1].strip()


def parse_identities(answer: str, names: list[str]) -> Optional[dict[str, str]]:
    """Name -> role for every name in `answer`, or None when the answer does not parse.

    It parses when the role words occur exactly `len(names)` times in all (a hedge such as
    "a knight or a knave" fails) and each name appears as "<Name> is a knight|knave".
    """
    lowered = answer.lower()
    if lowered.count("knight") + lowered.count("knave") != len(names):
        return None
    roles = {}
    for name in names:
        match = re.search(rf"\b{re.escape(name)}\b\s+is\s+a\s+\b(knight|knave)\b", answer,
                          re.IGNORECASE)
        if match is None:
            return None
        roles[name] = match.group(1).lower()
    return roles


def knights_knaves_score(text: str, gold: str, *, require_format: bool = True,
                         correct: float = ANSWER_CORRECT, wrong: float = ANSWER_WRONG,
                         unparsed: float = ANSWER_UNPARSED) -> float:
    """Logic-RL's answer score: 2 fully correct, -1.5 parsed but wrong, -2 unparsed / missing.

    Args:
      text: the response, including any text the prompt already opened it with ("<think>").
      gold: the puzzle's `solution_text_format` ("(1) Zoey is a knight\\n(2) ...").
      require_format: score -2 unless `logic_format_ok(text)`, as the released scorer does;
        False scores the last answer tag of any response.
      correct, wrong, unparsed: the three values.

    Raises:
      ValueError: `gold` names nobody.
    """
    truth = parse_solution_text_format(gold)
    if not truth:
        raise ValueError(f"gold answer names no knight or knave: {gold!r}")
    if require_format and not logic_format_ok(text):
        return unparsed
    answer = last_answer(text)
    predicted = parse_identities(answer, list(truth)) if answer is not None else None
    if predicted is None:
        return unparsed
    return correct if predicted == truth else wrong


def format_identities(roles: Mapping[str, str]) -> str:
    """The K&K answer text for `roles` (name -> role): "(1) Zoey is a knight\\n(2) ..."."""
    return "\n".join(f"({i}) {name} is a {role}"
                     for i, (name, role) in enumerate(roles.items(), start=1))
