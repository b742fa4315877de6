"""Seeded Knights and Knaves puzzles in the published K&K layout, fully offline (no jax).

The K&K dataset (Xie et al. 2024, "On Memorization of Large Language Models in Logical
Reasoning", arXiv 2410.23123), which Logic-RL trains on: on an island of knights (always tell
the truth) and knaves (always lie), each of n people makes a statement about who is which;
exactly one assignment of roles is consistent with all statements.

A statement is a formula in the dataset's structured form (its `statements` field holds them
as Python tuple text), with person indices 0..n-1:

    ("telling-truth", j)   person j is a knight      ("lying", j)   person j is a knave
    ("not", atom)          ("and", a, b)   ("or", a, b)   ("->", a, b)   ("<=>", a, b)

As in the published data, connectives take atoms (depth 2), so the English needs no
brackets: "Zoey is not a knave", "If Zoey is a knight then Oliver is a knave", "Zoey is a
knight if and only if Oliver is a knave". Nobody says "I am a knave" (no role satisfies it).

A person i is consistent when (i is a knight) == (statement i is true). The solver evaluates
every statement on all 2^n assignments at once as a bitmask (bit a of a table is the value
under assignment a, where person i is a knight iff bit i of a is set), so checking a puzzle
is a few integer operations; puzzles without exactly one consistent assignment are dropped.

Rows carry the published fields `quiz`, `names`, `knight_knave`, `statements`, `solution`
(one bool per person, True = knight), `solution_text`, `solution_text_format` and `index`
(the dataset's chain-of-thought fields `cot_*` are not produced). `knights_knaves_example`
turns such a row (generated, or read from a K&K / Logic-RL JSONL or Parquet file) into an
r1jax example: `question` = the quiz, `answer` = `solution_text_format` (the gold the
`knights_knaves` reward parses), plus `names`, `knights` (the bools) and `statements`.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from typing import Any, Optional, Sequence

import numpy as np

from r1jax.data.sources import BadRow, LoadStats, PromptSource
from r1jax.rewards.logic import format_identities, parse_solution_text_format

CONNECTIVES = ("not", "and", "or", "->", "<=>")
ATOMS = ("telling-truth", "lying")
MIN_PEOPLE, MAX_PEOPLE = 2, 8
KNIGHT_KNAVE = {"Knave": "Knave", "Knight": "Knight", "a_knave": "a knave",
                "a_knight": "a knight", "knave": "knave", "knight": "knight"}
NAMES = (
    "Aiden", "Alexander", "Amelia", "Aria", "Aurora", "Ava", "Avery", "Benjamin", "Charlotte",
    "Chloe", "Daniel", "David", "Elizabeth", "Ella", "Emily", "Emma", "Ethan", "Evelyn",
    "Grace", "Harper", "Henry", "Isabella", "Jack", "Jackson", "Jacob", "James", "Joseph",
    "Liam", "Lily", "Logan", "Lucas", "Luke", "Mason", "Matthew", "Mia", "Michael", "Noah",
    "Oliver", "Olivia", "Owen", "Penelope", "Riley", "Samuel", "Scarlett", "Sebastian",
    "Sofia", "Sophia", "Victoria", "William", "Zoey")
# How a person's statement is reported in the quiz ({content} is the rendered formula).
SAYINGS = (
    '{name} said, "{content}."', "{name} said that {content}.",
    "{name} told you that {content}.", '{name} stated, "{content}".',
    'According to {name}, "{content}".', '"{content}," {name} declared.',
    "{name} expressed that {content}.", '{name} commented, "{content}".',
    'In a statement by {name}: "{content}".', '{name} remarked, "{content}".',
    'As {name} put it, "{content}".', '"{content}," {name} claimed.')
QUIZ_HEAD = ("A very special island is inhabited only by knights and knaves. Knights always "
             "tell the truth, and knaves always lie.")
QUIZ_TAIL = "So who is a knight and who is a knave?"


# ----------------------------------------------------------------------------------------
# Formulas: sampling, bit-parallel truth tables, solving.


def _sample_atom(rng: np.random.Generator, speaker: int, n: int) -> tuple:
    while True:
        atom = (ATOMS[int(rng.integers(2))], int(rng.integers(n)))
        if atom != ("lying", speaker):
            return atom


def sample_statement(rng: np.random.Generator, speaker: int, n: int) -> tuple:
    """A random depth-2 statement of `speaker` among n people: an atom or a connective.

    The six shapes (atom, not, and, or, ->, <=>) are equally likely; the two operands of a
    binary connective differ.
    """
    shape = int(rng.integers(len(CONNECTIVES) + 1))
    if shape == 0:
        return _sample_atom(rng, speaker, n)
    op = CONNECTIVES[shape - 1]
    if op == "not":
        return ("not", _sample_atom(rng, speaker, n))
    first = _sample_atom(rng, speaker, n)
    second = first
    while second == first:
        second = _sample_atom(rng, speaker, n)
    return (op, first, second)


@functools.lru_cache(maxsize=None)
def _knight_table(person: int, n: int) -> int:
    """Bitmask over the 2^n assignments: bit a set iff person is a knight under a."""
    return sum(1 << a for a in range(1 << n) if a >> person & 1)


def truth_table(statement: tuple, n: int) -> int:
    """The statement's value under all 2^n assignments, as a 2^n-bit mask.

    Raises:
      ValueError: an unknown operator or a person index outside 0..n-1.
    """
    full = (1 << (1 << n)) - 1
    op = statement[0]
    if op in ATOMS:
        if not 0 <= statement[1] < n:
            raise ValueError(f"person {statement[1]} out of range for {n} people")
        knights = _knight_table(statement[1], n)
        return knights if op == "telling-truth" else full & ~knights
    tables = [truth_table(s, n) for s in statement[1:]]
    if op == "not":
        return full & ~tables[0]
    if op == "and":
        return _fold(tables, lambda x, y: x & y)
    if op == "or":
        return _fold(tables, lambda x, y: x | y)
    if op == "->":
        return full & (~tables[0] | tables[1])
    if op == "<=>":
        return full & ~(tables[0] ^ tables[1])
    raise ValueError(f"unknown operator {op!r} in {statement!r}")


def _fold(tables: list, combine) -> int:
    value = tables[0]
    for table in tables[1:]:
        value = combine(value, table)
    return value


def solve(statements: Sequence[tuple]) -> list[tuple[bool, ...]]:
    """Every consistent assignment (True = knight), in increasing assignment order."""
    n = len(statements)
    full = (1 << (1 << n)) - 1
    consistent = full
    for person, statement in enumerate(statements):
        consistent &= full & ~(_knight_table(person, n) ^ truth_table(statement, n))
    return [tuple(bool(a >> i & 1) for i in range(n))
            for a in range(1 << n) if consistent >> a & 1]


# ----------------------------------------------------------------------------------------
# Text.


def _atom_text(atom: tuple, names: Sequence[str], negated: bool = False) -> str:
    role = KNIGHT_KNAVE["a_knight"] if atom[0] == "telling-truth" else KNIGHT_KNAVE["a_knave"]
    return f"{names[atom[1]]} is {'not ' if negated else ''}{role}"


def statement_text(statement: tuple, names: Sequence[str]) -> str:
    """English for a depth-2 statement ("If Zoey is a knight then Oliver is a knave")."""
    op = statement[0]
    if op in ATOMS:
        return _atom_text(statement, names)
    if op == "not":
        return _atom_text(statement[1], names, negated=True)
    parts = [_atom_text(s, names) for s in statement[1:]]
    if op in ("and", "or"):
        return f" {op} ".join(parts)
    if op == "->":
        return f"If {parts[0]} then {parts[1]}"
    return f"{parts[0]} if and only if {parts[1]}"


def _listing(items: Sequence[str]) -> str:
    if len(items) == 2:
        return f"{items[0]} and {items[1]}"
    return ", ".join(items[:-1]) + ", and " + items[-1]


def make_row(statements: Sequence[tuple], solution: Sequence[bool], names: Sequence[str],
             sayings: Sequence[str], index: int) -> dict:
    """One puzzle in the published K&K layout (`sayings`: one SAYINGS template a person)."""
    said = [tmpl.format(name=name, content=statement_text(s, names))
            for tmpl, name, s in zip(sayings, names, statements)]
    quiz = " ".join([QUIZ_HEAD, f"You meet {len(names)} inhabitants: {_listing(names)}.",
                     *said, QUIZ_TAIL])
    roles = {name: "knight" if knight else "knave" for name, knight in zip(names, solution)}
    return {"quiz": quiz, "names": list(names), "knight_knave": dict(KNIGHT_KNAVE),
            "statements": repr(tuple(statements)), "solution": [bool(k) for k in solution],
            "solution_text": _listing([f"{n} is a {r}" for n, r in roles.items()]) + ".",
            "solution_text_format": format_identities(roles), "index": index}


# ----------------------------------------------------------------------------------------
# Generation.


def _is_test(statements: tuple, test_fraction: float) -> bool:
    digest = hashlib.sha256(repr(statements).encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < test_fraction


def generate_rows(num_examples: int, *, split: str = "train", seed: int = 0,
                  min_people: int = MIN_PEOPLE, max_people: int = MAX_PEOPLE,
                  test_fraction: float = 0.1, max_attempts: int = 200_000) -> list[dict]:
    """`num_examples` distinct uniquely solvable puzzles of one split, as K&K rows.

    Each puzzle draws its number of people uniformly from min_people..max_people, one
    statement per person, names and sayings; it is kept when it has exactly one solution,
    differs from the puzzles kept before, and belongs to `split` (a hash of its statements
    decides, so the train and test splits never share a puzzle, whatever the seeds).

    Args:
      num_examples: puzzles to make.
      split: "train" or "test".
      seed: numpy Generator seed; the same arguments give the same rows.
      min_people, max_people: inclusive range, within 2..8.
      test_fraction: share of all puzzles that belong to the test split, in (0, 1).
      max_attempts: candidate puzzles drawn before giving up.

    Raises:
      ValueError: bad arguments, or fewer than num_examples puzzles after max_attempts
        candidates (a small space: 2 people, a small test_fraction).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if num_examples < 1 or not MIN_PEOPLE <= min_people <= max_people <= MAX_PEOPLE:
        raise ValueError(f"need num_examples >= 1 and {MIN_PEOPLE} <= min_people <= "
                         f"max_people <= {MAX_PEOPLE}; got {num_examples}, {min_people}, "
                         f"{max_people}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    rows, seen = [], set()
    for _ in range(max_attempts):
        n = int(rng.integers(min_people, max_people + 1))
        statements = tuple(sample_statement(rng, i, n) for i in range(n))
        if statements in seen or _is_test(statements, test_fraction) != (split == "test"):
            continue
        solutions = solve(statements)
        if len(solutions) != 1:
            continue
        seen.add(statements)
        names = [NAMES[i] for i in rng.choice(len(NAMES), size=n, replace=False)]
        sayings = [SAYINGS[i] for i in rng.integers(len(SAYINGS), size=n)]
        rows.append(make_row(statements, solutions[0], names, sayings, len(rows)))
        if len(rows) == num_examples:
            return rows
    raise ValueError(f"only {len(rows)} of {num_examples} distinct {split} puzzles with "
                     f"{min_people}..{max_people} people after {max_attempts} attempts")


def generate_knights_knaves(num_examples: int, *, split: str = "train", seed: int = 0,
                            min_people: int = MIN_PEOPLE, max_people: int = MAX_PEOPLE,
                            test_fraction: float = 0.1) -> PromptSource:
    """Generated puzzles as a PromptSource of task "knights_knaves" (see `generate_rows`).

    Examples are `knights_knaves_example` of each row: `id`, `question` (the quiz),
    `answer` (the gold "(1) Name is a knight\\n..."), `names`, `knights`, `statements`,
    `num_people`.
    """
    rows = generate_rows(num_examples, split=split, seed=seed, min_people=min_people,
                         max_people=max_people, test_fraction=test_fraction)
    examples = [dict(knights_knaves_example(row, number),
                     id=f"knights_knaves-{split}-{seed}-{row['index']}")
                for number, row in enumerate(rows, 1)]
    stats = LoadStats(path=f"knights_knaves(split={split}, seed={seed})", rows=len(rows),
                      kept=len(rows))
    return PromptSource(name="knights_knaves", task="knights_knaves", examples=examples,
                        stats=stats)


# ----------------------------------------------------------------------------------------
# The recipe for rows in the published layout.


def _field(row: dict, key: str) -> Any:
    value = row
    for part in key.split("."):
        if not isinstance(value, dict) or value.get(part) is None:
            return None
        value = value[part]
    return value


def _names(row: dict) -> list[str]:
    names = row.get("names")
    if names is None:
        raise BadRow("missing_field", "missing field 'names'")
    if (not isinstance(names, (list, tuple)) or not names
            or not all(isinstance(n, str) and n.strip() for n in names)):
        raise BadRow("wrong_type", "field 'names' is not a list of names")
    return [n.strip() for n in names]


def _gold(row: dict, names: list[str]) -> tuple[str, list[bool]]:
    """(solution_text_format, knights) checked against each other and against `names`."""
    solution = row.get("solution")
    if solution is not None:
        solution = list(solution)
        if len(solution) != len(names) or not all(isinstance(k, bool) for k in solution):
            raise BadRow("wrong_type", "field 'solution' is not one bool per name")
    text = _field(row, "solution_text_format") or _field(
        row, "reward_model.ground_truth.solution_text_format")
    if text is None:
        if solution is None:
            raise BadRow("missing_field", "no 'solution_text_format' and no 'solution'")
        text = format_identities({n: "knight" if k else "knave"
                                  for n, k in zip(names, solution)})
    if not isinstance(text, str):
        raise BadRow("wrong_type", "field 'solution_text_format' is not a string")
    roles = parse_solution_text_format(text)
    if sorted(roles) != sorted(names):
        raise BadRow("bad_answer", f"solution_text_format names {sorted(roles)}, the row "
                     f"names {sorted(names)}")
    knights = [roles[n] == "knight" for n in names]
    if solution is not None and knights != solution:
        raise BadRow("bad_answer", "solution_text_format disagrees with 'solution'")
    return text, knights


def _statements(row: dict, n: int) -> Optional[str]:
    text = _field(row, "statements") or _field(row, "reward_model.ground_truth.statements")
    if text is None:
        return None
    try:
        parsed = ast.literal_eval(text) if isinstance(text, str) else None
    except (ValueError, SyntaxError) as e:
        raise BadRow("bad_statements", f"field 'statements' does not parse: {e}") from e
    if not isinstance(parsed, tuple) or len(parsed) != n:
        raise BadRow("bad_statements", "field 'statements' is not one formula per person")
    return text


def knights_knaves_example(row: dict, number: int) -> dict:
    """Recipe for K&K rows (the K&K dataset, Logic-RL's parquet files, `generate_rows`).

    Reads `quiz` (the question), `names`, and the gold from `solution_text_format` (top
    level, or Logic-RL's `reward_model.ground_truth`) and / or `solution` (bools); when both
    are present they must agree. Logic-RL's chat-formatted `prompt` column is ignored: the
    run's template renders the quiz.

    Raises:
      BadRow: missing or empty quiz, bad names, gold that does not name exactly the row's
        people, or unparseable statements.
    """
    quiz = row.get("quiz")
    if quiz is None:
        raise BadRow("missing_field", "missing field 'quiz'")
    if not isinstance(quiz, str):
        raise BadRow("wrong_type", f"field 'quiz' is {type(quiz).__name__}, expected str")
    if not quiz.strip():
        raise BadRow("empty_question", "field 'quiz' is empty")
    names = _names(row)
    answer, knights = _gold(row, names)
    index = row.get("index")
    return {"id": f"kk-{index if index is not None else number}", "question": quiz,
            "answer": answer, "names": names, "knights": knights,
            "statements": _statements(row, len(names)), "num_people": len(names)}
