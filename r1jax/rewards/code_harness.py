"""The function-call server that runs inside the sandbox, and the value codec both sides use.

This module is standard-library only and runs unchanged on the sandbox's interpreter
(Python 3.8+): `r1jax.rewards.code` sends its source, plus a call to `serve(program)`, as
the sandboxed program. `serve` runs the untrusted program, then answers call requests, one
JSON line each, until stdin closes:

  -> {"ready": true} | {"ready": false, "error": "..."}          once, after the program ran
  <- {"id": 3, "name": "f", "args": [...], "kwargs": {...}}
  -> {"id": 3, "value": ...} | {"id": 3, "error": ["ValueError", "message"]}

Values cross as JSON with tags for what JSON lacks (tuples, sets, dicts with non-string
keys, bytes, complex, non-finite floats). Only plain data crosses: an object with a
rigged `__eq__`, a generator or a class instance cannot be returned (it is an error), so the
tests, which run outside the sandbox, compare genuine built-in values.
"""

import json
import math

_TAG = "$"


def encode(value):
    """A JSON-able tree for a plain value (None, bool, int, float, str, bytes, complex, and
    lists, tuples, dicts, sets, frozensets of them); TypeError for anything else."""
    kind = type(value)
    if value is None or kind in (bool, int, str):
        return value
    if kind is float:
        return value if math.isfinite(value) else {_TAG: "float", "v": repr(value)}
    if kind is list:
        return [encode(v) for v in value]
    if kind in (tuple, set, frozenset):
        return {_TAG: kind.__name__, "v": [encode(v) for v in value]}
    if kind is dict:
        return {_TAG: "dict", "v": [[encode(k), encode(v)] for k, v in value.items()]}
    if kind is bytes:
        return {_TAG: "bytes", "v": value.hex()}
    if kind is complex:
        return {_TAG: "complex", "v": [encode(value.real), encode(value.imag)]}
    raise TypeError(f"a {kind.__name__} cannot cross the sandbox (only plain data can)")


_FLOATS = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


def decode(tree):
    """The value `encode` made `tree` from; ValueError for any other shape."""
    kind = type(tree)
    if tree is None or kind in (bool, int, float, str):
        return tree
    if kind is list:
        return [decode(v) for v in tree]
    if kind is not dict or set(tree) != {_TAG, "v"}:
        raise ValueError(f"not an encoded value: {kind.__name__}")
    tag, v = tree[_TAG], tree["v"]
    if tag == "float" and v in _FLOATS:
        return _FLOATS[v]
    if tag == "bytes" and type(v) is str:
        return bytes.fromhex(v)
    if type(v) is not list:
        raise ValueError(f"bad encoded {tag!r}")
    if tag in ("tuple", "set", "frozenset"):
        return {"tuple": tuple, "set": set, "frozenset": frozenset}[tag](decode(x) for x in v)
    if tag == "dict" and all(type(p) is list and len(p) == 2 for p in v):
        return {decode(k): decode(x) for k, x in v}
    if tag == "complex" and len(v) == 2:
        return complex(decode(v[0]), decode(v[1]))
    raise ValueError(f"bad encoded {tag!r}")


def resolve(namespace, name):
    """`name` in the program's namespace: a function, or `Class.method` of a fresh instance
    (LeetCode's `class Solution`), or a method of `Solution` when only that defines it."""
    head, _, method = name.partition(".")
    if method:
        return getattr(namespace[head](), method)
    if callable(namespace.get(name)):
        return namespace[name]
    if isinstance(namespace.get("Solution"), type) and hasattr(namespace["Solution"], name):
        return getattr(namespace["Solution"](), name)
    raise NameError(f"the program defines no function {name!r}")


def serve(program):
    """Runs `program`, then answers call requests on stdin until it closes."""
    import os

    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)  # the program's own stdin reads nothing, its prints go nowhere
    os.dup2(null, 1)

    def reply(message):
        try:
            line = json.dumps(message)
        except (ValueError, RecursionError) as e:  # a 5,000-digit int, a deep nest
            line = json.dumps({"id": message.get("id"), "error": [type(e).__name__, str(e)]})
        replies.write(line.encode() + b"\n")
        replies.flush()

    namespace = {"__name__": "__candidate__", "__builtins__": __builtins__}
    try:
        exec(compile(program, "<completion>", "exec"), namespace)
    except BaseException as e:  # noqa: BLE001 - whatever the program raised
        reply({"ready": False, "error": f"{type(e).__name__}: {e}"[:500]})
        return
    reply({"ready": True})
    for line in requests:
        request = json.loads(line)
        try:
            function = resolve(namespace, request["name"])
            value = function(*decode(request["args"]), **decode(request["kwargs"]))
            message = {"id": request["id"], "value": encode(value)}
        except BaseException as e:  # noqa: BLE001 - reported to the tests as the error
            message = {"id": request["id"], "error": [type(e).__name__, str(e)[:500]]}
        reply(message)
