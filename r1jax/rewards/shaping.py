"""Length and shape rewards from the R1 reproductions.

- `cosine_scaled`: Yeo et al. 2025, "Demystifying Long Chain-of-Thought Reasoning in LLMs",
  eq. 1: a cosine schedule over the generation length, separately for correct and wrong
  answers, and a fixed penalty when the generation hits the length limit.
- `repetition_penalty`: the same paper's n-gram repetition penalty (as in open-r1):
  `max_penalty * (1 - distinct n-grams / total n-grams)`.
- `language_consistency`: DeepSeek-R1's language-consistency reward, the fraction of the
  reasoning written in the target language.
"""

from __future__ import annotations

import itertools
import math
import re
import unicodedata

# Script of each target language; a "unit" is a word in an alphabetic script or a single
# character in Han / kana / Hangul, where words are not separated by spaces.
LANGUAGE_SCRIPTS = {"en": "LATIN", "fr": "LATIN", "de": "LATIN", "es": "LATIN",
                    "ru": "CYRILLIC", "zh": "CJK", "ja": "CJK", "ko": "HANGUL"}
_CHARACTER_SCRIPTS = ("CJK", "HIRAGANA", "KATAKANA", "HANGUL")
_LETTERS = re.compile(r"[^\W\d_]+")
# Inline maths and LaTeX command names are not prose in any language.
_NOT_PROSE = re.compile(r"\$[^$]*\$|\\[A-Za-z]+")


def cosine_schedule(t: float, T: float, value_at_0: float, value_at_T: float) -> float:
    """`value_at_T + (value_at_0 - value_at_T) * (1 + cos(pi t / T)) / 2` (Yeo et al. eq. 1)."""
    return value_at_T + 0.5 * (value_at_0 - value_at_T) * (1.0 + math.cos(math.pi * t / T))


def cosine_scaled(is_correct: bool, length: int, max_length: int, *,
                  correct_at_0: float = 2.0, correct_at_max: float = 1.0,
                  wrong_at_0: float = -10.0, wrong_at_max: float = 0.0,
                  exceed_penalty: float = -10.0) -> float:
    """Cosine length-scaled correctness reward (defaults: the paper's r0c, rLc, r0w, rLw, re).

    Shorter correct answers earn more (2 at length 0 down to 1 at the limit); wrong answers
    are penalised less the longer they think (-10 at length 0 up to 0 at the limit); a
    generation that reaches `max_length` (truncated) gets `exceed_penalty`.

    Args:
      is_correct: the accuracy verdict of the completion.
      length: completion length in tokens.
      max_length: the generation limit in tokens (> 0).
    """
    if max_length <= 0:
        raise ValueError(f"max_length must be > 0, got {max_length}")
    if length >= max_length:
        return exceed_penalty
    if is_correct:
        return cosine_schedule(length, max_length, correct_at_0, correct_at_max)
    return cosine_schedule(length, max_length, wrong_at_0, wrong_at_max)


def repetition_penalty(completion: str, *, ngram_size: int = 3,
                       max_penalty: float = -1.0) -> float:
    """`max_penalty * (1 - distinct / total)` over lower-cased whitespace-word n-grams.

    0.0 for completions with fewer than `ngram_size` words; `max_penalty` must be <= 0.
    """
    if max_penalty > 0:
        raise ValueError(f"max_penalty must be <= 0, got {max_penalty}")
    if ngram_size < 1:
        raise ValueError(f"ngram_size must be >= 1, got {ngram_size}")
    words = completion.lower().split()
    total = len(words) - ngram_size + 1
    if total <= 0:
        return 0.0
    distinct = len({tuple(words[i:i + ngram_size]) for i in range(total)})
    return (1.0 - distinct / total) * max_penalty


def _script(char: str) -> str:
    name = unicodedata.name(char, "")
    return name.split(" ", 1)[0] if name else ""


def _units(text: str) -> list[str]:
    """Script of each language unit of `text` (words; single CJK / kana / Hangul characters)."""
    scripts = []
    for word in _LETTERS.findall(_NOT_PROSE.sub(" ", text)):
        for script, run in itertools.groupby(word, key=_script):
            n = len(list(run))
            if script in _CHARACTER_SCRIPTS:
                scripts.extend(["HANGUL" if script == "HANGUL" else "CJK"] * n)
            elif n >= 2:  # a one-letter word is almost always a variable (x, n), not prose
                scripts.append(script)
    return scripts


def reasoning_text(completion: str) -> str:
    """The reasoning: text after `<think>` (or from the start) up to `</think>` (or the end)."""
    start = completion.find("<think>")
    start = 0 if start < 0 else start + len("<think>")
    end = completion.find("</think>", start)
    return completion[start:] if end < 0 else completion[start:end]


def language_consistency(completion: str, language: str = "en") -> float:
    """Fraction of the reasoning's language units written in the target language's script.

    Units are words of two or more letters or single Han / kana / Hangul characters; digits,
    symbols, one-letter words (variables), `$...$` maths and LaTeX command names are
    language-neutral and not counted. A reasoning with no units scores 0.

    Args:
      completion: model output; the reasoning is the `<think>` block when present.
      language: a key of LANGUAGE_SCRIPTS ("en", "zh", "ru", ...).
    """
    if language not in LANGUAGE_SCRIPTS:
        raise ValueError(f"unknown language {language!r}; known: {sorted(LANGUAGE_SCRIPTS)}")
    units = _units(reasoning_text(completion))
    if not units:
        return 0.0
    return sum(u == LANGUAGE_SCRIPTS[language] for u in units) / len(units)
