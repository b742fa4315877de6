"""Every recipe on its real file in ../shared/data (counts from SOURCES.md), and the DAPO,
OpenR1-Math, NuminaMath and Countdown layouts on small files built here in those layouts."""

import collections
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from r1jax.data import DataError, field_recipe, load_benchmark, load_source

# SOURCES.md, section 1.
COUNTS = {"gsm8k": 1319, "gsm8k_train": 7473, "math500": 500, "aime24": 30, "aime25": 30,
          "amc23": 40, "qwen_gsm8k": 1319, "minerva_math": 272, "olympiadbench": 675}


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_counts_and_fields(data_dir, name):
    source = load_source(name, data_dir=data_dir)
    assert len(source) == COUNTS[name] == source.stats.kept == source.stats.rows
    assert not source.stats.skipped
    assert len({ex["id"] for ex in source.examples}) == len(source)
    for ex in source.examples:
        assert isinstance(ex["question"], str) and ex["question"].strip()
        if name == "olympiadbench":
            assert isinstance(ex["answer"], list) and all(isinstance(a, str) for a in ex["answer"])
        else:
            assert isinstance(ex["answer"], str) and ex["answer"].strip()


def test_gsm8k_final_answers(data_dir):
    train = load_source("gsm8k_train", data_dir=data_dir).examples
    raw = [json.loads(line) for line in open(os.path.join(data_dir, "gsm8k/train.jsonl"))]
    finals = [r["answer"].rsplit("####", 1)[1].strip() for r in raw]
    assert sum("," in f for f in finals) == 79   # thousands separators in the file ...
    assert all("," not in ex["answer"] for ex in train)   # ... removed by the recipe
    assert [ex["answer"] for ex in train] == [f.replace(",", "") for f in finals]
    test = load_source("gsm8k", data_dir=data_dir).examples
    assert test[0]["answer"] == "18" and test[0]["question"].startswith("Janet")
    # the Qwen copy has the same problems and answers, plus its own idx
    qwen = load_source("qwen_gsm8k", data_dir=data_dir).examples
    assert [(a["question"], a["answer"]) for a in test] == [(b["question"], b["answer"])
                                                            for b in qwen]
    assert qwen[5]["id"] == "5"


def test_math500_fields(data_dir):
    examples = load_source("math500", data_dir=data_dir).examples
    assert collections.Counter(ex["level"] for ex in examples) == {1: 43, 2: 90, 3: 105,
                                                                  4: 128, 5: 134}
    assert collections.Counter(ex["subject"] for ex in examples)["Algebra"] == 124
    assert examples[0]["answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert examples[0]["id"] == "test/precalculus/807.json"


def test_aime_and_amc_answer_types(data_dir):
    aime24 = load_source("aime24", data_dir=data_dir).examples
    assert sum(ex["answer"].startswith("0") for ex in aime24) == 7   # "025" kept as written
    assert {ex["answer"] for ex in aime24} >= {"025", "073", "204"}
    aime25 = load_source("aime25", data_dir=data_dir).examples
    assert [ex["answer"] for ex in aime25[:8]] == ["70", "588", "16", "117", "279", "504",
                                                   "821", "77"]
    amc23 = load_source("amc23", data_dir=data_dir).examples
    assert amc23[0]["answer"] == "27" and all("." not in ex["answer"] for ex in amc23)
    assert sorted({ex["answer"] for ex in amc23}, key=float)[0] == "-1"


def test_minerva_gold_is_last_box_of_solution(data_dir):
    examples = load_source("minerva_math", data_dir=data_dir).examples
    assert [ex["answer"] for ex in examples[:4]] == ["1.6", "4.5e33", "41.8", "20.39"]


def test_olympiadbench_lists_and_context(data_dir):
    examples = load_source("olympiadbench", data_dir=data_dir).examples
    by_id = {ex["id"]: ex for ex in examples}
    assert by_id["1664"]["answer"] == ["$69$,$84$"]
    assert by_id["1612"]["answer"] == ["$2^{1009}$"]
    assert collections.Counter(ex["answer_type"] for ex in examples) == {
        "Numerical": 572, "Expression": 64, "Tuple": 33, "Interval": 6}
    raw = [json.loads(line) for line in
           open(os.path.join(data_dir, "qwen25_math_eval/olympiadbench/test.jsonl"))]
    with_context = [r for r in raw if r["context"]]
    for r in with_context:
        assert by_id[str(r["id"])]["question"] == r["context"].strip() + "\n\n" + r["question"]


def test_load_benchmark_for_evaluation(data_dir):
    problems = load_benchmark("aime24", data_dir=data_dir, limit=5)
    assert len(problems) == 5
    assert problems[0]["gold"] == problems[0]["answer"] == "204"
    assert problems[0]["id"] == "60" and "Aya" in problems[0]["question"]
    path = os.path.join(data_dir, "math500/test.jsonl")
    by_path = load_benchmark(path, recipe="math500", limit=3)
    assert [p["gold"] for p in by_path] == ["\\left( 3, \\frac{\\pi}{2} \\right)", "p - q",
                                            "\\frac{14}{3}"]


def test_name_and_path_errors(data_dir, tmp_path, monkeypatch):
    with pytest.raises(DataError, match="unknown benchmark 'math501'"):
        load_source("math501", data_dir=data_dir)
    with pytest.raises(DataError, match="recipe is needed"):
        load_source(os.path.join(data_dir, "math500/test.jsonl"))
    with pytest.raises(DataError, match="unknown recipe"):
        load_source(os.path.join(data_dir, "math500/test.jsonl"), recipe="math5000")
    monkeypatch.delenv("R1JAX_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="R1JAX_DATA_DIR"):
        load_source("math500")
    monkeypatch.setenv("R1JAX_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match="not found"):
        load_source("math500")


def _write_parquet(path, rows, schema=None):
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return str(path)


def test_dapo_parquet_layout(tmp_path):
    instruction = ("Solve the following math problem step by step. The last line of your "
                   "response should be of the form Answer: $Answer (without quotes) where "
                   "$Answer is the answer to the problem.\n\n{}\n\nRemember to put your answer "
                   "on its own line after \"Answer:\"")
    rows = [{"data_source": "math_dapo",
             "prompt": [{"content": instruction.format(q), "role": "user"}],
             "ability": "MATH",
             "reward_model": {"ground_truth": a, "style": "rule-lighteval/MATH_v2"},
             "extra_info": {"index": f"uuid-{i}"}}
            for i, (q, a) in enumerate([("What is 6*7?", "42"), ("Find 2^10.", "1024"),
                                        ("Bad row", None)])]
    path = _write_parquet(tmp_path / "dapo-math-17k.parquet", rows)
    source = load_source(path, recipe="dapo")
    assert [ex["answer"] for ex in source.examples] == ["42", "1024"]
    assert [ex["id"] for ex in source.examples] == ["uuid-0", "uuid-1"]
    assert "What is 6*7?" in source.examples[0]["question"]
    assert source.examples[0]["question"].startswith("Solve the following")
    assert source.stats.rows == 3 and dict(source.stats.skipped) == {"missing_field": 1}


def test_openr1_and_numina_layouts(tmp_path):
    openr1 = [{"problem": "Compute 1+1.", "solution": "Clearly $\\boxed{2}$.", "answer": "2",
               "problem_type": "Algebra", "question_type": "math-word-problem",
               "source": "olympiads", "uuid": "u-1", "is_reasoning_complete": [True],
               "generations": ["<think>..."], "correctness_math_verify": [True]},
              {"problem": "Compute 3*3.", "solution": "So $\\boxed{9}$.", "answer": "",
               "problem_type": "Algebra", "question_type": "math-word-problem",
               "source": "amc", "uuid": "u-2", "is_reasoning_complete": [False],
               "generations": [], "correctness_math_verify": []}]
    path = _write_parquet(tmp_path / "openr1.parquet", openr1)
    examples = load_source(path, recipe="openr1_math").examples
    assert [(ex["id"], ex["answer"]) for ex in examples] == [("u-1", "2"), ("u-2", "9")]
    # NuminaMath-CoT has no answer column: the gold is the solution's last box
    numina = tmp_path / "numina.jsonl"
    numina.write_text("\n".join(json.dumps(r) for r in [
        {"source": "cn_k12", "problem": "Find x if 2x=8.", "solution": "x = \\boxed{4}",
         "messages": [{"role": "user", "content": "Find x"}]},
        {"source": "cn_k12", "problem": "No box.", "solution": "It is 4.", "messages": []},
    ]) + "\n")
    source = load_source(str(numina), recipe="numina_math")
    assert [ex["answer"] for ex in source.examples] == ["4"]
    assert dict(source.stats.skipped) == {"no_final_answer": 1}


def test_countdown_layouts(tmp_path):
    tinyzero = [{"data_source": "countdown", "prompt": [{"role": "user", "content": "..."}],
                 "ability": "math",
                 "reward_model": {"style": "rule", "ground_truth": {"target": 24,
                                                                    "numbers": [2, 3, 4]}},
                 "extra_info": {"split": "train", "index": 0}}]
    examples = load_source(_write_parquet(tmp_path / "train.parquet", tinyzero),
                           recipe="countdown").examples
    assert (examples[0]["numbers"], examples[0]["target"]) == ([2, 3, 4], 24)
    assert "[2, 3, 4]" in examples[0]["question"] and "24" in examples[0]["question"]
    hf = tmp_path / "tasks.jsonl"
    hf.write_text(json.dumps({"target": 98, "nums": [44, 19, 35]}) + "\n"
                  + json.dumps({"target": "98", "nums": [44, 19, 35]}) + "\n")
    source = load_source(str(hf), recipe="countdown")
    assert source.task == "countdown" and source.examples[0]["numbers"] == [44, 19, 35]
    assert dict(source.stats.skipped) == {"wrong_type": 1}


def test_field_recipe_with_nested_keys(tmp_path):
    path = tmp_path / "custom.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"q": {"text": "What is 2+2?"}, "meta": {"gold": 4}, "key": 11},
        {"q": {"text": "What is 3+3?"}, "meta": {"gold": "6"}, "key": 12},
        {"q": {"text": "Where is the gold?"}, "meta": {}},
    ]))
    source = load_source(str(path), recipe=field_recipe("q.text", "meta.gold", id_key="key"))
    assert [(ex["id"], ex["question"], ex["answer"]) for ex in source.examples] == [
        ("11", "What is 2+2?", "4"), ("12", "What is 3+3?", "6")]
    assert dict(source.stats.skipped) == {"missing_field": 1}
    gsm_like = field_recipe("question", "answer", answer_format="gsm8k")
    assert gsm_like({"question": "q", "answer": "work\n#### 1,234"}, 1)["answer"] == "1234"


def test_open_prompts_recipe_keeps_prompts_without_answers(tmp_path):
    """`prompts`: the `prompt` (else `question`) text, no gold answer; empty or missing
    prompts are skipped and counted."""
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "Write a haiku about rain.", "id": "h1"},
        {"question": "Explain recursion to a child."},
        {"prompt": "   "},
        {"text": "no prompt field"},
    ]))
    source = load_source(str(path), recipe="prompts")
    assert [(ex["id"], ex["question"], ex["answer"]) for ex in source.examples] == [
        ("h1", "Write a haiku about rain.", ""),
        ("prompt-2", "Explain recursion to a child.", "")]
    assert dict(source.stats.skipped) == {"empty_question": 1, "missing_field": 1}
