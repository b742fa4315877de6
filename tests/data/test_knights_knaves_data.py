"""Knights and Knaves puzzles: exactly one solution (checked by a brute force written here,
from the rows' structured statements), determinism, coverage, text, and the recipe on rows
in the published K&K / Logic-RL layout."""

import ast
import itertools
import json

import pytest

from r1jax.data import DataError, load_source
from r1jax.data.knights_knaves import (CONNECTIVES, generate_knights_knaves, generate_rows,
                                       make_row, solve)
from r1jax.rewards import REWARD_FUNCTIONS


def holds(formula, knights) -> bool:
    """The formula's truth under `knights` (one bool per person), by its definition."""
    op, args = formula[0], formula[1:]
    if op == "telling-truth":
        return knights[args[0]]
    if op == "lying":
        return not knights[args[0]]
    values = [holds(a, knights) for a in args]
    return {"not": lambda: not values[0], "and": lambda: all(values),
            "or": lambda: any(values), "->": lambda: (not values[0]) or values[1],
            "<=>": lambda: values[0] == values[1]}[op]()


def brute_force(statements):
    """Assignments where every knight's statement is true and every knave's is false."""
    return [k for k in itertools.product([True, False], repeat=len(statements))
            if all(holds(s, k) == k[i] for i, s in enumerate(statements))]


def operators(formula):
    yield formula[0]
    for arg in formula[1:]:
        if isinstance(arg, tuple):
            yield from operators(arg)


@pytest.fixture(scope="module")
def rows():
    return generate_rows(300, seed=7)


def test_every_puzzle_has_exactly_the_gold_solution(rows):
    for row in rows:
        statements = ast.literal_eval(row["statements"])
        assert brute_force(statements) == [tuple(row["solution"])], row["quiz"]


def test_published_row_is_solved_the_same_way():
    # A row of Logic-RL's data/kk/instruct/5ppl/test.parquet (the K&K dataset).
    published = ("(('or', ('telling-truth', 1), ('lying', 1)), ('lying', 2), ('or', "
                 "('lying', 0), ('lying', 4)), ('or', ('telling-truth', 2), "
                 "('telling-truth', 4)), ('lying', 3))")
    statements = ast.literal_eval(published)
    gold = (True, False, True, True, False)
    assert brute_force(statements) == [gold]
    assert solve(statements) == [gold]


def test_generator_is_deterministic_given_the_seed(rows):
    assert generate_rows(300, seed=7) == rows
    assert generate_rows(300, seed=8) != rows


def test_generator_covers_2_to_8_people_and_every_connective(rows):
    assert {len(r["names"]) for r in rows} == set(range(2, 9))
    used = {op for r in rows for s in ast.literal_eval(r["statements"]) for op in operators(s)}
    assert used == set(CONNECTIVES) | {"telling-truth", "lying"}
    assert len({r["statements"] for r in rows}) == len(rows)   # no repeated puzzle


def test_people_range_and_split_are_respected():
    eight = generate_rows(20, seed=0, min_people=8, max_people=8)
    assert {len(r["names"]) for r in eight} == {8}
    train = {r["statements"] for r in generate_rows(200, seed=0, split="train")}
    test = {r["statements"] for r in generate_rows(200, seed=0, split="test")}
    assert not train & test
    with pytest.raises(ValueError, match="min_people"):
        generate_rows(5, min_people=1)
    with pytest.raises(ValueError, match="distinct"):   # far more than there are 2-people ones
        generate_rows(5000, min_people=2, max_people=2, max_attempts=20000)


def test_quiz_text_of_a_hand_made_puzzle():
    # By hand: if Zoey lied, Oliver would be a knight, so Ethan too, but then Ethan's
    # statement (false <=> ... ) fails; so Zoey is a knight, Oliver and Ethan knaves.
    statements = (("->", ("telling-truth", 1), ("lying", 1)), ("not", ("lying", 2)),
                  ("<=>", ("lying", 0), ("lying", 1)))
    assert brute_force(statements) == [(True, False, False)]
    row = make_row(statements, (True, False, False), ["Zoey", "Oliver", "Ethan"],
                   ["{name} said that {content}.", 'According to {name}, "{content}".',
                    '"{content}," {name} declared.'], 3)
    assert row["quiz"] == (
        "A very special island is inhabited only by knights and knaves. Knights always tell "
        "the truth, and knaves always lie. You meet 3 inhabitants: Zoey, Oliver, and Ethan. "
        "Zoey said that If Oliver is a knight then Oliver is a knave. According to Oliver, "
        "\"Ethan is not a knave\". \"Zoey is a knave if and only if Oliver is a knave,\" "
        "Ethan declared. So who is a knight and who is a knave?")
    assert row["solution_text"] == ("Zoey is a knight, Oliver is a knave, and Ethan is a "
                                    "knave.")
    assert row["solution_text_format"] == ("(1) Zoey is a knight\n(2) Oliver is a knave\n"
                                           "(3) Ethan is a knave")
    assert row["solution"] == [True, False, False] and row["index"] == 3


PUBLISHED = {
    "quiz": "A very special island is inhabited only by knights and knaves. Knights always "
            "tell the truth, and knaves always lie. You meet 2 inhabitants: Zoey and Oliver. "
            "Zoey said that Oliver is a knave. Oliver said, \"Zoey is a knight.\" So who is "
            "a knight and who is a knave?",
    "names": ["Zoey", "Oliver"],
    "knight_knave": {"knight": "knight", "knave": "knave", "a_knight": "a knight",
                     "a_knave": "a knave", "Knight": "Knight", "Knave": "Knave"},
    "statements": "(('lying', 1), ('telling-truth', 0))",
    "solution": [False, False],
    "solution_text": "Zoey is a knave, and Oliver is a knave.",
    "solution_text_format": "(1) Zoey is a knave\n(2) Oliver is a knave",
    "index": 11,
}
# Logic-RL's parquet rows: the gold only under reward_model.ground_truth, a chat prompt.
LOGIC_RL = {
    "quiz": "You meet 2 inhabitants: Ava and Liam. Ava said that Ava is a knight and Liam is "
            "a knave. Liam said that Ava is a knave. So who is a knight and who is a knave?",
    "names": ["Ava", "Liam"],
    "prompt": [{"role": "user", "content": "<|im_start|>system ..."}],
    "reward_model": {"ground_truth": {
        "solution_text_format": "(1) Ava is a knight\n(2) Liam is a knave",
        "statements": "(('and', ('telling-truth', 0), ('lying', 1)), ('lying', 0))"},
        "style": "rule"},
}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_recipe_reads_the_published_layout(tmp_path):
    bad = [
        dict(PUBLISHED, solution=[True, False]),                 # disagrees with the text
        {k: v for k, v in PUBLISHED.items() if k != "quiz"},     # no quiz
        dict(PUBLISHED, names=["Zoey", "Ethan"]),                # gold names someone else
        dict(PUBLISHED, statements="(('lying', 1),"),            # broken statements
    ]
    path = write_jsonl(tmp_path / "kk.jsonl", [PUBLISHED, LOGIC_RL] + bad)
    source = load_source(path, recipe="knights_knaves")
    assert source.task == "knights_knaves" and len(source) == 2
    assert dict(source.stats.skipped) == {"bad_answer": 2, "missing_field": 1,
                                          "bad_statements": 1}
    first, second = source.examples
    assert first["id"] == "kk-11" and first["question"] == PUBLISHED["quiz"]
    assert first["answer"] == PUBLISHED["solution_text_format"]
    assert first["knights"] == [False, False] and first["names"] == ["Zoey", "Oliver"]
    assert second["id"] == "kk-2" and second["knights"] == [True, False]
    assert second["answer"] == "(1) Ava is a knight\n(2) Liam is a knave"
    # The gold the recipe keeps is what the reward grades against.
    completion = "<think>Liam lies.</think><answer>(1) Ava is a knight (2) Liam is a knave" \
                 "</answer>"
    assert REWARD_FUNCTIONS["knights_knaves"](completion, second, None) == 2.0
    assert REWARD_FUNCTIONS["knights_knaves"](completion, first, None) == -2.0   # other names
    wrong = "<think>.</think><answer>Zoey is a knight, Oliver is a knave</answer>"
    assert REWARD_FUNCTIONS["knights_knaves"](wrong, first, None) == -1.5
    with pytest.raises(DataError, match="line 3"):
        load_source(path, recipe="knights_knaves", strict=True)


def test_recipe_reads_parquet_and_builds_gold_from_solution(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa
    row = {k: v for k, v in PUBLISHED.items() if k not in ("solution_text_format",
                                                           "knight_knave")}
    path = str(tmp_path / "kk.parquet")
    pq.write_table(pa.Table.from_pylist([row]), path)
    (example,) = load_source(path, recipe="knights_knaves").examples
    assert example["answer"] == "(1) Zoey is a knave\n(2) Oliver is a knave"


def test_generated_source_and_builder_task():
    from r1jax.builder import build_source
    source = generate_knights_knaves(40, seed=3, min_people=3, max_people=5)
    assert source.task == "knights_knaves" and len(source) == 40
    assert len({e["id"] for e in source.examples}) == 40
    for example in source.examples:
        roles = ["knight" if k else "knave" for k in example["knights"]]
        gold = " ".join(f"{n} is a {r}" for n, r in zip(example["names"], roles))
        assert REWARD_FUNCTIONS["knights_knaves"](
            f"<think>.</think><answer>{gold}</answer>", example, None) == 2.0
    options = dict(min_people=3, max_people=5)
    built = build_source("knights_knaves", recipe=None, data_dir=None, limit=None,
                         strict=False, seed=3, num_generated=40, task_options=options)
    assert built.examples == source.examples
    held_out = build_source("knights_knaves", recipe=None, data_dir=None, limit=None,
                            strict=False, seed=3, num_generated=40, task_options=options,
                            split="test")
    assert not {e["statements"] for e in held_out.examples} & \
        {e["statements"] for e in source.examples}
