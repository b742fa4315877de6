"""Math answer extraction and equivalence through math-verify.

The gold answer of a problem is parsed once (cached per process); the prediction is the text
that `extract_answer` pulls out of a completion (last `\\boxed{}`, last `<answer>` tag, or a
regex), parsed as LaTeX by math-verify and compared with `math_verify.verify`.

math-verify bounds its own parsing and comparison with `signal.alarm`, which only works on the
main thread of a process; call these functions from a main thread, or through `RewardPool`,
whose worker processes run them on their main threads and kill them on a harder deadline.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Optional, Sequence, Union

import math_verify
from math_verify.errors import TimeoutException
from math_verify.utils import timeout as math_verify_timeout

EXTRACTION_MODES = ("auto", "boxed", "answer_tag", "regex", "math_verify")
# DAPO's prompt asks for a last line "Answer: $Answer"; use with mode="regex".
DAPO_ANSWER_PATTERN = r"Answer:[ \t]*([^\n]+)"

# Priority 0 puts `\boxed{}` ahead of "final answer is" phrases when math-verify searches text.
_LATEX_FIRST = (math_verify.LatexExtractionConfig(boxed_match_priority=0),
                math_verify.ExprExtractionConfig())
# For free text (mode "math_verify"): only anchored answers (boxed, "answer:", "final answer
# is"), never the last number that happens to appear in the reasoning.
_ANCHORED = (math_verify.LatexExtractionConfig(boxed_match_priority=0,
                                               try_extract_without_anchor=False),
             math_verify.ExprExtractionConfig(try_extract_without_anchor=False))
# An unescaped `$`, `\(`, `\[` or a box: math-verify must search the text for the maths.
_DELIMITED = re.compile(r"(?<!\\)\$|\\\(|\\\[|\\boxed|\\fbox")
# LaTeX spacing inside numbers (`32,\!348`, `1\,000`): typography, never maths.
_NUMBER_SPACING = re.compile(r"\\!|(?<=\d)\\[,;: ](?=\d)")
_BOXED_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE = re.compile(r"\\\\|\\[{}]|[{}]")
_ANSWER_OPEN, _ANSWER_CLOSE = "<answer>", "</answer>"

GoldLike = Union[str, int, float, Sequence[Union[str, int, float]]]


class VerifierTimeout(Exception):
    """math-verify's own time limit ran out while parsing or comparing an answer."""


def last_boxed(text: str) -> Optional[str]:
    """Content of the last complete `\\boxed{...}` (or `\\fbox{...}`) in `text`, else None.

    Braces are matched in one pass, so an unclosed `\\boxed{` (a truncated completion) is
    skipped in favour of an earlier complete one; escaped braces (`\\{`, `\\}`) do not count.
    """
    opens = [m.end() - 1 for m in _BOXED_OPEN.finditer(text)]
    if not opens:
        return None
    close_of: dict[int, int] = {}
    stack: list[int] = []
    for m in _BRACE.finditer(text, opens[0]):
        token = m.group()
        if token == "{":
            stack.append(m.start())
        elif token == "}" and stack:
            close_of[stack.pop()] = m.start()
    for start in reversed(opens):
        if start in close_of:
            return text[start + 1:close_of[start]]
    return None


def last_answer_tag(text: str) -> Optional[str]:
    """Stripped content of the last complete `<answer>...</answer>` in `text`, else None."""
    end = text.rfind(_ANSWER_CLOSE)
    if end < 0:
        return None
    start = text.rfind(_ANSWER_OPEN, 0, end)
    if start < 0:
        return None
    return text[start + len(_ANSWER_OPEN):end].strip()


def extract_answer(completion: str, mode: str = "auto",
                   pattern: Optional[str] = None) -> Optional[str]:
    """The final-answer text of a completion, or None when there is none.

    Args:
      completion: model output (the response only, not the prompt).
      mode: "boxed" (last complete `\\boxed{}`), "answer_tag" (last `<answer>...</answer>`),
        "auto" (the answer tag when present, else the last box), "regex" (last match of
        `pattern`: its first group, or the whole match when it has no group), or
        "math_verify" (math-verify's own anchored search: boxed, "final answer is ...",
        "answer: ...").
      pattern: the regular expression for mode "regex".

    Raises:
      ValueError: unknown mode, or mode "regex" without a pattern.
    """
    if mode == "boxed":
        return last_boxed(completion)
    if mode == "answer_tag":
        return last_answer_tag(completion)
    if mode == "auto":
        tagged = last_answer_tag(completion)
        return tagged if tagged is not None else last_boxed(completion)
    if mode == "regex":
        if not pattern:
            raise ValueError("extraction mode 'regex' needs a pattern")
        matches = list(re.finditer(pattern, completion, re.DOTALL))
        if not matches:
            return None
        last = matches[-1]
        return (last.group(1) if last.re.groups else last.group()).strip()
    if mode == "math_verify":
        parsed = _parse(completion, _ANCHORED, timeout_s=3)
        return parsed[-1] if parsed and isinstance(parsed[-1], str) else None
    raise ValueError(f"unknown extraction mode {mode!r}; expected one of {EXTRACTION_MODES}")


def _parse(text: str, config: Sequence[Any], timeout_s: int) -> list:
    try:
        return math_verify.parse(text, list(config), parsing_timeout=max(1, int(timeout_s)),
                                 raise_on_error=True)
    except TimeoutException as e:
        raise VerifierTimeout(f"math-verify parsing took over {timeout_s} s") from e
    except Exception:  # noqa: BLE001 - an unparseable answer is a wrong answer, as in math-verify
        return []


def parse_answer(answer: Optional[str], timeout_s: int = 3) -> list:
    """math-verify's parse of an extracted answer (sympy object and its string), [] if none.

    Text without math delimiters is read as one LaTeX expression (as if it were boxed), so
    `x = 3`, `(1, 2]` or `\\frac{\\sqrt3}{2}` keep their structure; text with an unescaped
    `$`, `\\(`, `\\[` or `\\boxed` is searched by math-verify instead. LaTeX spacing inside
    numbers (`32,\\!348`, `1\\,000`) is removed first.

    Raises:
      VerifierTimeout: math-verify's parse ran past `timeout_s`.
    """
    if answer is None or not answer.strip():
        return []
    answer = _NUMBER_SPACING.sub("", answer)
    if not _DELIMITED.search(answer):
        answer = "\\boxed{" + answer + "}"
    return _parse(answer, _LATEX_FIRST, timeout_s)


def gold_answer_text(gold: Union[str, int, float]) -> str:
    """The final answer inside a dataset's answer field.

    A GSM8K worked solution yields the text after its last `####`; a worked solution with
    `\\boxed{}` yields the last box; numbers (AIME25 ints, AMC23 floats such as 27.0) become
    their shortest exact text; anything else is returned as is.
    """
    if isinstance(gold, bool) or not isinstance(gold, (str, int, float)):
        raise TypeError(f"gold answer must be str, int or float, got {type(gold).__name__}")
    if isinstance(gold, float):
        return str(int(gold)) if gold.is_integer() else repr(gold)
    if isinstance(gold, int):
        return str(gold)
    if "####" in gold:
        return gold.rsplit("####", 1)[1].strip()
    boxed = last_boxed(gold)
    return boxed if boxed is not None else gold.strip()


@functools.lru_cache(maxsize=4096)
def _parse_gold_cached(gold: tuple[str, ...], timeout_s: int) -> tuple[tuple, ...]:
    return tuple(tuple(parse_answer(gold_answer_text(g), timeout_s)) for g in gold)


def parse_gold(gold: GoldLike, timeout_s: int = 3) -> tuple[tuple, ...]:
    """Parses a gold answer once per process; a list gives alternatives (any may match).

    Args:
      gold: the dataset's answer: a LaTeX string, a worked solution with `\\boxed{}` or a
        GSM8K `#### 42` line, a number, or a list of acceptable answers (OlympiadBench).

    Returns:
      one math-verify parse (a tuple, possibly empty) per alternative.
    """
    alternatives = [gold] if isinstance(gold, (str, int, float)) else list(gold)
    if not alternatives:
        raise ValueError("gold answer list is empty")
    texts = tuple(g if isinstance(g, str) else gold_answer_text(g) for g in alternatives)
    return _parse_gold_cached(texts, int(timeout_s))


def verify_parsed(gold: Sequence[Sequence], pred: Sequence, timeout_s: int = 3) -> bool:
    """True when any gold alternative matches the parsed prediction (math-verify's rules).

    Pairs are compared one at a time so that a math-verify timeout on one pair is reported
    (as VerifierTimeout) only when no other pair matches.

    Raises:
      VerifierTimeout: no pair matched and at least one comparison ran out of time.
    """
    timed_out = False
    for alternative in gold:
        for g in alternative:
            for p in pred:
                try:
                    if math_verify.verify(g, p, timeout_seconds=max(1, int(timeout_s)),
                                          raise_on_error=True):
                        return True
                except TimeoutException:
                    timed_out = True
                except Exception:  # noqa: BLE001 - math-verify's own default: no match
                    continue
    if timed_out:
        raise VerifierTimeout(f"math-verify comparison took over {timeout_s} s")
    return False


def verify(gold: GoldLike, pred: Optional[str], timeout_s: int = 3) -> bool:
    """Whether an extracted answer (from `extract_answer`) is equivalent to the gold answer.

    Raises:
      VerifierTimeout: math-verify ran past `timeout_s` without deciding.
    """
    parsed = parse_answer(pred, timeout_s)
    return bool(parsed) and verify_parsed(parse_gold(gold, timeout_s), parsed, timeout_s)


def math_accuracy(completion: str, gold: GoldLike, *, mode: str = "auto",
                  pattern: Optional[str] = None, correct_reward: float = 1.0,
                  wrong_reward: float = 0.0, timeout_s: int = 3) -> float:
    """Accuracy reward: `correct_reward` if the completion's final answer equals the gold.

    Args:
      completion: model output (response only).
      gold: the dataset's answer (see `parse_gold`).
      mode, pattern: how the answer is extracted (see `extract_answer`); a completion with
        no extractable answer is wrong.
      correct_reward, wrong_reward: 1 / 0 by default; DAPO uses 1 / -1.
      timeout_s: math-verify's own limit for each parse and each comparison (whole seconds).

    Raises:
      VerifierTimeout: math-verify ran out of time (RewardPool counts it and scores 0).
    """
    answer = extract_answer(completion, mode, pattern)
    return correct_reward if verify(gold, answer, timeout_s) else wrong_reward


def answer_key(answer: Optional[str], timeout_s: int = 3) -> Optional[str]:
    """A hashable normal form of an extracted answer for majority voting, or None.

    Numbers (integers, fractions, decimals, surds) map to their value at 12 significant
    digits, so `0.5`, `1/2` and `\\frac{1}{2}` share a key; other expressions map to sympy's
    canonical string of the parse; unparseable text, and answers whose normal form takes over
    `timeout_s` to compute (e.g. `(10^{7})!`), map to their stripped text.
    Equivalent answers that sympy does not canonicalise alike (e.g. `x(x+1)` and `x^2+x`) get
    different keys: voting is by normal form, not by pairwise `verify`. Like math-verify, this
    bounds its work with `signal.alarm`, so call it from a main thread.
    """
    if answer is None or not answer.strip():
        return None
    text_key = "text:" + answer.strip()
    try:
        parsed = parse_answer(answer, timeout_s)
    except VerifierTimeout:
        return text_key
    if not parsed or isinstance(parsed[0], str):
        return text_key
    try:
        return math_verify_timeout(max(1, int(timeout_s)))(_sympy_key)(parsed[0])
    except TimeoutException:
        return text_key
    except Exception:  # noqa: BLE001 - printing or evaluating the parse failed
        return text_key


# Values beyond this are keyed by their float text: rounding them to an exact integer would
# build a huge int in C code that no alarm interrupts.
_EXACT_INTEGER_LIMIT = 10**15


def _sympy_key(expr: Any) -> str:
    import sympy  # math-verify already imported it

    # `x = 3` votes with `3`, as math-verify grades an assignment by its value.
    if isinstance(expr, sympy.Eq) and isinstance(expr.lhs, sympy.Symbol):
        expr = expr.rhs
    if isinstance(expr, sympy.Basic) and expr.is_number:
        value = sympy.N(expr, 15)
        if value.is_real and value.is_finite:
            if abs(value) < _EXACT_INTEGER_LIMIT:
                nearest = sympy.Integer(round(value))
                if abs(value - nearest) <= 1e-9 * max(1, abs(nearest)):
                    return f"num:{nearest}"
            return f"num:{sympy.Float(value, 12)}"
        return f"num:{sympy.N(expr, 12)}"
    return f"expr:{expr}"
