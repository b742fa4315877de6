"""Test layouts of code datasets, turned into one of two kinds of test suite.

- `FunctionTests`: statements (trusted test code) that call the program's functions:
  HumanEval (`prompt`, `test` defining `check(candidate)`, `entry_point`), MBPP
  (`test_list` of assert strings, `test_setup_code`), and call-based APPS / TACO /
  LiveCodeBench tests (`fn_name` with argument lists and expected values).
- `StdioTests`: (input, expected output) pairs: APPS / TACO `input_output`, top-level
  `inputs` / `outputs`, CodeContests `public_tests` / `private_tests` /
  `generated_tests`, LiveCodeBench `public_test_cases` / `private_test_cases`.

`make_suite(example)` picks the layout from the example's fields. Everything here is the
dataset's (trusted) side; nothing runs model output.
"""

from __future__ import annotations

import ast
import base64
import builtins
import dataclasses
import io
import json
import pickle
import zlib
from typing import Any, Mapping, Optional, Union


@dataclasses.dataclass(frozen=True)
class FunctionTests:
    """Test statements that call the program's functions through the sandbox.

    Attributes:
      tests: (source, counted) statements run in order in one namespace; a counted
        statement is a test (it passes when it raises nothing); an uncounted one is set-up
        (a failure fails it and every later test).
      targets: test-namespace name -> the program's function ("f", or "Solution.f").
      setup: trusted code run first in the test namespace (HumanEval's prompt and test
        module, MBPP's test_setup_code).
      namespace: values placed in the test namespace before the setup.
      entry_point: HumanEval's function name: the program is the prompt followed by the
        completion (see `humaneval_program`). None: the program is the completion.
      prompt: HumanEval's prompt.
    """

    tests: tuple
    targets: Mapping[str, str]
    setup: tuple = ()
    namespace: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    entry_point: Optional[str] = None
    prompt: str = ""


@dataclasses.dataclass(frozen=True)
class StdioTests:
    """Programs read `inputs[i]` on stdin and must print `outputs[i]` (after
    `normalize_output`)."""

    inputs: tuple
    outputs: tuple


Suite = Union[FunctionTests, StdioTests]


def normalize_output(text: str) -> str:
    """Trailing whitespace of every line and trailing blank lines removed (\\r\\n -> \\n)."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def call_matches(value: Any, expected: Any, lenient: bool = False) -> bool:
    """Equality of a returned value with an expected JSON value (tuples compare as lists).

    `lenient` is APPS's rule for its call-based tests, whose expected outputs are often
    wrapped in a list: `[x]` also accepts `x`.
    """
    value = _lists(value)
    if value == expected:
        return True
    return lenient and isinstance(expected, list) and bool(expected) and value == expected[0]


def _lists(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    return value


def _humaneval(example: Mapping[str, Any]) -> FunctionTests:
    entry_point, test = example["entry_point"], example["test"]
    module = ast.parse(test)
    check = next((node for node in module.body if isinstance(node, ast.FunctionDef)
                  and node.name == "check" and node.args.args), None)
    if check is None:
        raise ValueError("the HumanEval test defines no check(candidate)")
    param = check.args.args[0].arg
    statements = [(ast.unparse(s), _is_test(s)) for s in check.body]
    if not any(counted for _, counted in statements) or not _compiles(statements):
        statements = [(f"check({param})", True)]
    return FunctionTests(tests=tuple(statements), targets={param: entry_point,
                                                           entry_point: entry_point},
                         setup=(example.get("prompt", ""), test), entry_point=entry_point,
                         prompt=example.get("prompt", ""))


def _is_test(statement: ast.stmt) -> bool:
    """Contains an assert that is not `assert <constant>` (HumanEval's `assert True, ...`)."""
    return any(isinstance(node, ast.Assert) and not isinstance(node.test, ast.Constant)
               for node in ast.walk(statement))


def _compiles(statements: list) -> bool:
    try:
        for source, _ in statements:
            compile(source, "<test>", "exec")
    except SyntaxError:  # a `return` inside check's body, say
        return False
    return True


def _mbpp(example: Mapping[str, Any]) -> FunctionTests:
    asserts = [t for t in example["test_list"] if isinstance(t, str) and t.strip()]
    if not asserts:
        raise ValueError("empty test_list")
    setup = example.get("test_setup_code") or ""
    defined = {n.id for n in ast.walk(ast.parse(setup)) if isinstance(n, ast.Name)}
    defined |= {n.name for n in ast.walk(ast.parse(setup))
                if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    called = []
    for source in asserts:
        for node in ast.walk(ast.parse(source)):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and not hasattr(builtins, node.func.id) and node.func.id not in defined
                    and node.func.id not in called):
                called.append(node.func.id)
    if not called:
        raise ValueError("the tests call no function of the program")
    return FunctionTests(tests=tuple((s, True) for s in asserts),
                         targets={name: name for name in called}, setup=(setup,))


def _call_tests(fn_name: str, args: list, expected: list, lenient: bool) -> FunctionTests:
    if not isinstance(fn_name, str) or not fn_name.strip():
        raise ValueError("fn_name must be a non-empty string")
    args = [a if isinstance(a, list) else [a] for a in args]
    tests = tuple((f"assert _matches(candidate(*_args[{i}]), _expected[{i}], {lenient})", True)
                  for i in range(len(args)))
    return FunctionTests(tests=tests, targets={"candidate": fn_name.strip()},
                         namespace={"_args": args, "_expected": list(expected),
                                    "_matches": call_matches})


def _text(value: Any) -> str:
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    if not isinstance(value, str):
        raise ValueError(f"a test input / output is {type(value).__name__}, expected str")
    return value


def _pairs(inputs: Any, outputs: Any, fn_name: Optional[str] = None,
           lenient: bool = False) -> Suite:
    if not isinstance(inputs, list) or not isinstance(outputs, list):
        raise ValueError("inputs and outputs must be lists")
    if len(inputs) != len(outputs) or not inputs:
        raise ValueError(f"{len(inputs)} inputs and {len(outputs)} outputs")
    if fn_name:
        return _call_tests(fn_name, inputs, outputs, lenient)
    return StdioTests(tuple(_text(i) for i in inputs), tuple(_text(o) for o in outputs))


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _apps(example: Mapping[str, Any]) -> Suite:
    io_spec = _json(example["input_output"])
    if not isinstance(io_spec, dict):
        raise ValueError("input_output is not a JSON object")
    return _pairs(io_spec.get("inputs"), io_spec.get("outputs"), io_spec.get("fn_name"),
                  lenient=True)


def _codecontests(example: Mapping[str, Any]) -> StdioTests:
    inputs, outputs = [], []
    for key in ("public_tests", "private_tests", "generated_tests"):
        tests = _json(example.get(key)) or {}
        inputs += list(tests.get("input") or [])
        outputs += list(tests.get("output") or [])
    suite = _pairs(inputs, outputs)
    assert isinstance(suite, StdioTests)
    return suite


class _StringsOnly(pickle.Unpickler):
    """Unpickles plain data only (LiveCodeBench pickles a JSON string); no classes."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def livecodebench_cases(value: Any) -> list:
    """LiveCodeBench test cases: a list, a JSON string, or (private_test_cases of the
    released files) base64 of zlib of a pickled JSON string."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raw = zlib.decompress(base64.b64decode(value))
            value = json.loads(_StringsOnly(io.BytesIO(raw)).load())
    if not isinstance(value, list) or not all(isinstance(c, dict) for c in value):
        raise ValueError("test cases are not a list of {input, output, testtype} objects")
    return value


def _livecodebench(example: Mapping[str, Any]) -> Suite:
    cases = list(livecodebench_cases(example["public_test_cases"]))
    if example.get("private_test_cases"):  # never `+=`: the example's own list stays as is
        cases = cases + livecodebench_cases(example["private_test_cases"])
    if not cases:
        raise ValueError("no test cases")
    if all(c.get("testtype") == "functional" for c in cases):
        metadata = _json(example.get("metadata") or {})
        args = [[json.loads(line) for line in c["input"].split("\n") if line.strip()]
                for c in cases]
        return _pairs(args, [json.loads(c["output"]) for c in cases],
                      metadata.get("func_name"))
    if any(c.get("testtype") == "functional" for c in cases):
        raise ValueError("mixed stdin and functional test cases")
    return _pairs([c["input"] for c in cases], [c["output"] for c in cases])


def make_suite(example: Mapping[str, Any]) -> Suite:
    """The tests of a code example, from whichever layout its fields follow.

    Raises:
      ValueError: no known layout, or a malformed one (the message says what).
    """
    if "entry_point" in example and "test" in example:
        return _humaneval(example)
    if "test_list" in example:
        return _mbpp(example)
    if "input_output" in example:
        return _apps(example)
    if "inputs" in example and "outputs" in example:
        return _pairs(example["inputs"], example["outputs"], example.get("fn_name"))
    if "public_test_cases" in example:
        return _livecodebench(example)
    if "public_tests" in example or "private_tests" in example:
        return _codecontests(example)
    raise ValueError("no tests: the example has none of entry_point + test, test_list, "
                     "input_output, inputs + outputs, public_test_cases, public_tests")
