"""Code rewards: the completion's program is run against the example's tests in a sandbox.

`code_tests(completion, example)` extracts the last fenced code block, runs it in
`r1jax.rewards.sandbox` (bubblewrap, else an rlimits-only fallback) and scores 1 / 0 (all
tests pass) or the fraction of tests passed.

Who decides the verdict. The untrusted program never runs in the same interpreter as the
test code, so nothing it prints, exits with, patches or redefines reaches the verdict:

- Function tests (HumanEval `check(candidate)`, MBPP asserts, call-based APPS /
  LiveCodeBench) run in the caller's process (the reward worker), with every function
  under test replaced by a proxy. A call sends its arguments, as plain data, to the
  sandboxed program (`code_harness.serve`), which runs the function and sends back the
  return value, again as plain data (JSON with tags for tuples, sets, bytes, ...), or the
  name of the exception it raised. The asserts then compare genuine built-in values in a
  process the program cannot touch. So `sys.exit(0)` / `os._exit(0)` before the tests, a
  printed success marker, a redefined `check`, `assert` or builtins, a monkeypatched
  `AssertionError`, an object whose `__eq__` always answers True, and killing the parent
  (bwrap's init inside the sandbox) all leave tests failing; a call that times out, a
  sandbox that dies or a reply that breaks the protocol fails that test.
- Stdin / stdout tests run the program once per test and compare, in the caller, its
  captured stdout with the expected output (trailing whitespace per line and trailing
  blank lines ignored), requiring exit status 0 within the time limit.

Limits of this design: the program's functions only see plain-data arguments (a test that
passes a lambda or a class instance, or expects the function to mutate its argument in
place, or to return a generator or custom object, fails); the test code itself is trusted
(it comes from the dataset and runs unsandboxed in the reward worker); and the isolation of
the program is only as strong as the sandbox backend (see `r1jax.rewards.sandbox`: the
rlimits fallback does not isolate the file system, the network or same-user processes).
"""

from __future__ import annotations

import builtins
import dataclasses
import functools
import json
import logging
import re
import time
from typing import Any, Mapping, Optional, Sequence

from r1jax.rewards import code_harness, sandbox
from r1jax.rewards.code_layouts import (FunctionTests, StdioTests, make_suite,
                                        normalize_output)

log = logging.getLogger(__name__)

MODES = ("all_or_nothing", "fraction")
DEFAULT_FENCE_TAGS = ("python", "py", "python3", "")
_FENCE = re.compile(r"```([^\n`]*)\n(.*?)```", re.DOTALL)


def extract_program(completion: str, fence_tags: Sequence[str] = DEFAULT_FENCE_TAGS,
                    require_fence: bool = False) -> Optional[str]:
    """The last fenced code block whose language tag is in `fence_tags` ("" = bare ```).

    Without such a block: the whole completion (a base model continuing a HumanEval prompt
    writes bare code), or None with `require_fence`.
    """
    tags = {t.lower() for t in fence_tags}
    blocks = [body for tag, body in _FENCE.findall(completion) if tag.strip().lower() in tags]
    if blocks:
        return blocks[-1]
    return None if require_fence else completion


def humaneval_program(prompt: str, code: str, entry_point: str) -> str:
    """HumanEval's convention: the program is the prompt followed by the completion. A
    completion that defines `entry_point` itself comes after the prompt on a new line (the
    prompt's imports and helpers stay; its stub is redefined)."""
    if re.search(rf"(?m)^(async\s+)?def\s+{re.escape(entry_point)}\s*\(", code):
        return prompt + "\n" + code
    return prompt + code


class CandidateError(Exception):
    """The program's function raised an exception that is not a built-in one."""


class _Abort(BaseException):
    """The sandbox timed out, died or broke the protocol (not catchable as Exception)."""


@functools.lru_cache(maxsize=1)
def _harness_source() -> str:
    with open(code_harness.__file__, encoding="utf-8") as f:
        return f.read()


def _raised(name: Any, text: Any) -> Exception:
    """The exception a test sees for one the program raised: the built-in class of that
    name when it is an Exception, else CandidateError."""
    cls = getattr(builtins, name, None) if isinstance(name, str) else None
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(str(text))
        except TypeError:  # UnicodeDecodeError and friends take other arguments
            pass
    return CandidateError(f"{name}: {text}")


class _Session:
    """One sandboxed program answering calls; restarted after a call times out."""

    def __init__(self, program: str, limits: sandbox.Limits, kind: Optional[str],
                 end: float):
        self.source = f"{_harness_source()}\nserve({program!r})\n"
        self.limits, self.kind, self.end = limits, kind, end
        self.box: Optional[sandbox.Sandbox] = None
        self.broken = False      # the program failed to load: every call fails
        self.aborted = False     # some call of the current test hit _Abort
        self.deadline = 0.0      # of the current test
        self._id = 0

    def _open(self) -> sandbox.Sandbox:
        if self.broken:
            raise _Abort("the program failed to load")
        if self.box is None:
            limits = dataclasses.replace(self.limits,
                                         wall_s=max(0.1, self.end - time.monotonic()))
            self.box = sandbox.start(self.source, limits=limits, kind=self.kind,
                                     capture_stderr=False)
            sent = self.box.send(b"", self.deadline)  # the program text
            ready = self._message(self.box) if sent else None
            if ready is None or ready.get("ready") is not True:
                self.broken = True
                self.close()
                raise _Abort(f"the program failed to load: {ready}")
        return self.box

    def _message(self, box: sandbox.Sandbox) -> Optional[dict]:
        line = box.read_line(min(self.deadline, box.deadline), self.limits.output_bytes)
        try:
            message = json.loads(line) if line is not None else None
        except (ValueError, RecursionError):
            return None
        return message if isinstance(message, dict) else None

    def call(self, name: str, args: tuple, kwargs: dict) -> Any:
        try:
            request = {"name": name, "args": code_harness.encode(list(args)),
                       "kwargs": code_harness.encode(dict(kwargs))}
        except (TypeError, RecursionError) as e:  # the test passes something we cannot send
            raise TypeError(f"cannot call {name} in the sandbox: {e}") from None
        box = self._open()
        self._id += 1
        request["id"] = self._id
        if not box.send(json.dumps(request).encode() + b"\n", self.deadline):
            self._abort(f"{name}: the program stopped reading")
        reply = self._message(box)
        if reply is None or reply.get("id") != self._id:
            self._abort(f"{name}: no valid reply within the time limit")
        if "value" in reply:
            try:
                return code_harness.decode(reply["value"])
            except (ValueError, TypeError, RecursionError):
                self._abort(f"{name}: the reply is not plain data")
        error = reply.get("error")
        if not isinstance(error, list) or len(error) != 2:
            self._abort(f"{name}: malformed reply")
        raise _raised(*error)

    def _abort(self, why: str) -> None:
        self.aborted = True
        self.close()
        raise _Abort(why)

    def close(self) -> None:
        if self.box is not None:
            self.box.close()
            self.box = None


class _Proxy:
    """Stands for one function of the program in the test namespace."""

    def __init__(self, session: _Session, name: str):
        self._session, self._name = session, name

    def __call__(self, *args, **kwargs):
        return self._session.call(self._name, args, kwargs)

    def __repr__(self) -> str:
        return f"<sandboxed {self._name}>"


def _run_function_tests(program: str, suite: FunctionTests, mode: str, timeout_s: float,
                        deadline: float, limits: sandbox.Limits,
                        kind: Optional[str]) -> tuple[int, int]:
    """(passed, total) of the suite's test statements."""
    namespace: dict = dict(suite.namespace, __name__="__tests__")
    for source in suite.setup:
        exec(compile(source, "<test setup>", "exec"), namespace)  # trusted dataset code
    session = _Session(program, limits, kind, deadline)
    for alias, target in suite.targets.items():
        namespace[alias] = _Proxy(session, target)
    total = sum(counted for _, counted in suite.tests)
    passed = 0
    try:
        for source, counted in suite.tests:
            session.deadline = min(time.monotonic() + timeout_s, deadline)
            session.aborted = False
            try:
                exec(compile(source, "<test>", "exec"), namespace)
                ok = not session.aborted  # a test's bare `except:` may have swallowed it
            except _Abort as e:
                log.debug("code test aborted: %s", e)
                ok = False
            except Exception:  # noqa: BLE001 - an assert or the program's error: failed
                ok = False
            if ok:
                passed += counted
            elif not counted:  # failed set-up: it and every later test fail
                return passed, total + 1
            elif mode == "all_or_nothing" or session.broken:
                break
    finally:
        session.close()
    return passed, total


def _run_stdio_tests(program: str, suite: StdioTests, mode: str, timeout_s: float,
                     deadline: float, limits: sandbox.Limits,
                     kind: Optional[str]) -> tuple[int, int]:
    passed = 0
    for given, expected in zip(suite.inputs, suite.outputs):
        wall = min(timeout_s, deadline - time.monotonic())
        if wall <= 0:
            break
        run_limits = dataclasses.replace(
            limits, wall_s=wall, cpu_s=timeout_s,
            output_bytes=max(limits.output_bytes, 2 * len(expected) + 4096))
        result = sandbox.run_python(program, given.encode("utf-8"), limits=run_limits,
                                    kind=kind)
        ok = result.ok and (normalize_output(result.stdout.decode("utf-8", "replace"))
                            == normalize_output(expected))
        passed += ok
        if not ok and mode == "all_or_nothing":
            break
    return passed, len(suite.inputs)


def code_tests(completion: str, example: Mapping[str, Any], *, language: str = "python",
               mode: str = "all_or_nothing", timeout_s: float = 4.0,
               total_timeout_s: float = 8.0, memory_mb: int = 1024, max_processes: int = 16,
               max_output_bytes: int = 1 << 20,
               fence_tags: Sequence[str] = DEFAULT_FENCE_TAGS, require_fence: bool = False,
               sandbox_kind: Optional[str] = None) -> float:
    """Runs the completion's program against the example's tests.

    Args:
      completion: the response text; its last fenced code block is the program.
      example: a code example with tests in one of the layouts of
        `r1jax.rewards.code_layouts.make_suite` (HumanEval, MBPP, APPS / TACO,
        CodeContests, LiveCodeBench, or plain `inputs` / `outputs`).
      language: only "python".
      mode: "all_or_nothing" (1.0 when every test passes, else 0.0) or "fraction".
      timeout_s: wall-clock limit of one test (one stdin/stdout run, or one test
        statement's calls into the program), also the CPU limit of each process.
      total_timeout_s: wall-clock limit of all tests of the completion; tests not reached
        fail. A RewardPool's `timeout_s` must exceed it (plus ~1 s of start-up).
      memory_mb, max_processes: address space per process and processes the program may
        start.
      max_output_bytes: stdout kept per run (more is a failure), and the largest reply.
      fence_tags, require_fence: see `extract_program`.
      sandbox_kind: "bwrap", "rlimits" or None ($R1JAX_SANDBOX, else auto).

    Raises:
      ValueError: unknown language or mode, or an example without usable tests.
    """
    if language != "python":
        raise ValueError(f"code_tests runs Python programs only, got language={language!r}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; known: {MODES}")
    suite = make_suite(example)
    program = extract_program(completion, fence_tags, require_fence)
    if program is None or not program.strip():
        return 0.0
    limits = sandbox.Limits(wall_s=total_timeout_s, cpu_s=total_timeout_s,
                            memory_mb=memory_mb, processes=max_processes,
                            output_bytes=max_output_bytes)
    deadline = time.monotonic() + total_timeout_s
    if isinstance(suite, StdioTests):
        passed, total = _run_stdio_tests(program, suite, mode, timeout_s, deadline, limits,
                                         sandbox_kind)
    else:
        if suite.entry_point is not None:
            program = humaneval_program(suite.prompt, program, suite.entry_point)
        passed, total = _run_function_tests(program, suite, mode, timeout_s, deadline,
                                            limits, sandbox_kind)
    if mode == "fraction":
        return passed / total
    return float(passed == total)

