"""SFT conversations from JSONL / Parquet rows, in the layouts public SFT sets use.

A loaded example is `{"messages": [{"role", "content"}, ...], "id": row number}`, rendered
later with the tokenizer's chat template (`r1jax.sft.render_conversation`). Layouts:

- "messages": a `messages` list of {role, content} (OpenR1-Math-220k, TRL's format).
- "sharegpt": a `conversations` list of {from, value} (`human` / `user`, `gpt` /
  `assistant`, `system`), and an optional top-level `system` string (OpenThoughts-114k,
  Bespoke-Stratos-17k, Light-R1-SFTData).
- "prompt_response": a prompt and a response field (`fields` names them: default
  {"prompt": "prompt", "response": "response", "system": "system"}).
- "s1k": s1K-1.1: `question`, `deepseek_thinking_trajectory`, `deepseek_attempt`; the
  response is "<think>\\n{trajectory}\\n</think>\\n\\n{attempt}".
- "limo": LIMO: `question` and `solution`.
- "auto": "messages" when a row has `messages`, "sharegpt" when it has `conversations`,
  else "prompt_response".

Rows that do not fit their layout are skipped and counted (`LoadStats`), or raise with
`strict`.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from r1jax.data.sources import BadRow, LoadStats, load_examples

LAYOUTS = ("auto", "messages", "sharegpt", "prompt_response", "s1k", "limo")
# Public SFT sets and the layout each is stored in.
RECIPES = {"openr1_math": "messages", "openthoughts": "sharegpt", "bespoke_stratos": "sharegpt",
           "light_r1": "sharegpt", "s1k": "s1k", "limo": "limo"}
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
          "system": "system"}


def _text(row: dict, key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise BadRow("missing_field", f"no text in field {key!r}")
    return value


def _messages(row: dict) -> list[dict]:
    msgs = row.get("messages")
    if not isinstance(msgs, (list, tuple)) or not msgs:
        raise BadRow("missing_field", "no `messages` list")
    out = []
    for m in msgs:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                or not isinstance(m.get("content"), str):
            raise BadRow("bad_message", f"a message is not {{role, content}}: {m!r:.80}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _sharegpt(row: dict) -> list[dict]:
    turns = row.get("conversations")
    if not isinstance(turns, (list, tuple)) or not turns:
        raise BadRow("missing_field", "no `conversations` list")
    out = []
    if isinstance(row.get("system"), str) and row["system"].strip():
        out.append({"role": "system", "content": row["system"]})
    for t in turns:
        role = _ROLES.get(t.get("from")) if isinstance(t, dict) else None
        if role is None or not isinstance(t.get("value"), str):
            raise BadRow("bad_message", f"a turn is not {{from, value}}: {t!r:.80}")
        out.append({"role": role, "content": t["value"]})
    return out


def _pair(prompt: str, response: str, system: Optional[str] = None) -> list[dict]:
    head = [{"role": "system", "content": system}] if system else []
    return head + [{"role": "user", "content": prompt},
                   {"role": "assistant", "content": response}]


def to_messages(row: dict, layout: str, fields: Optional[dict] = None) -> list[dict]:
    """One row as a messages list (BadRow when it does not fit `layout`)."""
    if layout == "auto":
        layout = "messages" if "messages" in row else \
            "sharegpt" if "conversations" in row else "prompt_response"
    if layout == "messages":
        msgs = _messages(row)
    elif layout == "sharegpt":
        msgs = _sharegpt(row)
    elif layout == "prompt_response":
        f = {"prompt": "prompt", "response": "response", "system": "system", **(fields or {})}
        system = row.get(f["system"])
        msgs = _pair(_text(row, f["prompt"]), _text(row, f["response"]),
                     system if isinstance(system, str) else None)
    elif layout == "s1k":
        msgs = _pair(_text(row, "question"),
                     f"<think>\n{_text(row, 'deepseek_thinking_trajectory').strip()}\n</think>"
                     f"\n\n{_text(row, 'deepseek_attempt').strip()}")
    elif layout == "limo":
        msgs = _pair(_text(row, "question"), _text(row, "solution"))
    else:
        raise ValueError(f"unknown conversation layout {layout!r} (known: {LAYOUTS})")
    if not any(m["role"] == "assistant" for m in msgs):
        raise BadRow("no_assistant", "no assistant turn")
    return msgs


def load_conversations(path: str, layout: str = "auto", fields: Optional[dict] = None, *,
                       strict: bool = False, limit: Optional[int] = None,
                       keep: Sequence[str] = ()) -> tuple[list[dict], LoadStats]:
    """Conversations of a JSONL / Parquet file; `layout` a LAYOUTS name or a RECIPES name.

    Each example is {"messages", "id" (the row's `id` when it is a string or an integer,
    else the row number), "row": {name: the row's value} for the names in `keep` present}.
    """
    layout = RECIPES.get(layout, layout)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown conversation layout {layout!r} (layouts: {LAYOUTS}; "
                         f"recipes: {tuple(RECIPES)})")

    def recipe(row: Any, number: int) -> dict:
        given = row.get("id")
        return {"messages": to_messages(row, layout, fields),
                "id": given if isinstance(given, (str, int)) else number,
                "row": {name: row[name] for name in keep if name in row}}
    return load_examples(path, recipe, strict=strict, limit=limit)
