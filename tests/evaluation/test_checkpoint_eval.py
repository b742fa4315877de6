"""`r1jax-eval --checkpoint`: a run written by r1jax.checkpoint.Checkpointer is evaluated
with the saved parameters (greedy completions equal those of the same parameters sampled
directly), the run's template and grading, and right verdicts on known-right answers."""

import json
import os
import re

import jax
import numpy as np
import optax
import pytest

from r1jax import builder
from r1jax.checkpoint import Checkpointer
from r1jax.config import RunConfig, from_dict, to_dict
from r1jax.evaluation import resolve_checkpoint
from r1jax.evaluation.cli import main
from r1jax.models import Decoder, save_hf
from r1jax.models.decoder import init_params
from r1jax.rewards import math_accuracy
from r1jax.sampling import Sampler, generate_text
from r1jax.sharding import single_device

PATTERN = r"(\d+)"
QUESTIONS = ["12+34", "7+8", "55+5", "90+1", "3+3", "41+29"]
MAX_NEW = 16
RUN = {
    "model": {"arch": dict(model_type="qwen2", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=128, tie_word_embeddings=False),
              "char_vocab": "0123456789+=,", "init_seed": 0},
    "data": {"template": "plain"},
    "rewards": {"functions": [{"name": "accuracy", "kwargs": {"mode": "regex",
                                                              "pattern": PATTERN}}]},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run directory with checkpoints at steps 3 and 5 (different params) and the
    character tokenizer saved under run_dir/tokenizer, as the trainer lays them out."""
    run_dir = str(tmp_path_factory.mktemp("run"))
    cfg = from_dict(RunConfig, RUN)
    tokenizer = builder.build_tokenizer(cfg.model, run_dir)
    model = builder.build_policy(cfg.model, single_device(), tokenizer)
    saved = {}
    checkpointer = Checkpointer(os.path.join(run_dir, "checkpoints"), async_save=False)
    for step, seed in ((3, 101), (5, 202)):
        # Not the init_seed parameters: a loader that re-initialized would be caught.
        params = init_params(model.config, jax.random.key(seed))
        state = {"params": params, "opt_state": optax.adamw(1e-3).init(params),
                 "step": jax.numpy.int32(step)}
        checkpointer.save(step, state, {"next_batch": step}, {"step": step,
                                                              "config": to_dict(cfg)})
        saved[step] = params
    checkpointer.close()
    return run_dir, model.config, tokenizer, saved


def direct_greedy(model_config, params, tokenizer):
    sampler = Sampler(Decoder(model_config, params=params, sharding=single_device()),
                      max_prompt_len=8, max_new_tokens=MAX_NEW,
                      eos_token_ids=[tokenizer.eos_token_id], pad_id=tokenizer.pad_token_id)
    out = generate_text(sampler, tokenizer, QUESTIONS, chat=False, temperature=0.0)
    return [texts[0] for texts in out]


def write_questions(path, golds):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for q, g in zip(QUESTIONS, golds):
            f.write(json.dumps({"q": q, "a": g}) + "\n")


def read_results(out_dir, name):
    with open(os.path.join(out_dir, f"{name}.json")) as f:
        report = json.load(f)
    with open(os.path.join(out_dir, f"{name}.samples.jsonl")) as f:
        return report, [json.loads(line) for line in f]


def evaluate_checkpoint(checkpoint, questions_file, out_dir, *extra):
    rc = main([f"--checkpoint={checkpoint}", f"--benchmarks={questions_file}",
               "--question_key=q", "--answer_key=a", f"--max_new_tokens={MAX_NEW}",
               f"--out_dir={out_dir}", "--no_progress", *extra])
    assert rc == 0
    return read_results(out_dir, "questions")


def test_resolve_checkpoint_finds_latest_and_explicit_steps(run):
    run_dir = run[0]
    ckpts = os.path.join(run_dir, "checkpoints")
    assert resolve_checkpoint(run_dir) == (run_dir, os.path.join(ckpts, "5"), 5)
    assert resolve_checkpoint(ckpts) == (run_dir, os.path.join(ckpts, "5"), 5)
    assert resolve_checkpoint(os.path.join(ckpts, "3")) == (run_dir, os.path.join(ckpts, "3"), 3)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_checkpoint(os.path.join(ckpts, "4"))


def test_checkpoint_params_come_back(run, tmp_path):
    run_dir, model_config, tokenizer, saved = run
    questions = str(tmp_path / "questions.jsonl")
    write_questions(questions, ["0"] * len(QUESTIONS))
    expected = {step: direct_greedy(model_config, saved[step], tokenizer) for step in (3, 5)}
    assert expected[3] != expected[5]  # the two checkpoints are told apart
    # Latest step from the run directory, on the default mesh (all 8 test devices).
    report, samples = evaluate_checkpoint(run_dir, questions, str(tmp_path / "latest"))
    assert [s["completion"] for s in samples] == expected[5]
    assert report["settings"]["step"] == 5 and report["settings"]["template"] == "plain"
    assert report["extraction_mode"] == "regex"
    assert report["settings"]["answer_pattern"] == PATTERN
    # An explicit step on one device.
    _, samples = evaluate_checkpoint(os.path.join(run_dir, "checkpoints", "3"), questions,
                                     str(tmp_path / "step3"), "--mesh=1,1,1")
    assert [s["completion"] for s in samples] == expected[3]
    assert all(s["prompt"] == q for s, q in zip(samples, QUESTIONS))


def test_run_from_a_hf_directory_rebuilds_the_model_from_its_config_json(run, tmp_path):
    """A run whose model.path is a HF directory (the usual fine-tuning case)."""
    _, model_config, tokenizer, saved = run
    hf_dir = save_hf(Decoder(model_config, params=init_params(model_config, jax.random.key(7)),
                             sharding=single_device()), str(tmp_path / "hf"),
                     tokenizer=tokenizer)
    cfg = from_dict(RunConfig, dict(RUN, model={"path": hf_dir}))
    checkpointer = Checkpointer(str(tmp_path / "run" / "checkpoints"), async_save=False)
    checkpointer.save(9, {"params": saved[5]}, {}, {"step": 9, "config": to_dict(cfg)})
    checkpointer.close()
    questions = str(tmp_path / "questions.jsonl")
    write_questions(questions, ["0"] * len(QUESTIONS))
    report, samples = evaluate_checkpoint(str(tmp_path / "run"), questions,
                                          str(tmp_path / "out"), "--mesh=1,1,1")
    assert [s["completion"] for s in samples] == direct_greedy(model_config, saved[5],
                                                               tokenizer)
    assert report["settings"]["step"] == 9


def test_known_right_answers_score_through_the_cli(run, tmp_path):
    """Golds set to what the model says for half the problems: pass@1 = 1/2 exactly."""
    run_dir, model_config, tokenizer, saved = run
    said = [re.findall(PATTERN, text) for text in direct_greedy(model_config, saved[5],
                                                                tokenizer)]
    assert all(said), "every greedy completion of this seed holds a number"
    golds = [numbers[-1] if i % 2 == 0 else "987654" for i, numbers in enumerate(said)]
    questions = str(tmp_path / "questions.jsonl")
    write_questions(questions, golds)
    # A second file (same stem: reported as questions_2) with all three golds right.
    write_questions(str(tmp_path / "more" / "questions.jsonl"),
                    [numbers[-1] for numbers in said[:3]])
    report, samples = evaluate_checkpoint(
        run_dir, f"{questions},{tmp_path}/more/questions.jsonl", str(tmp_path / "out"),
        "--mesh=1,1,1")
    assert [s["correct"] for s in samples] == [True, False] * 3
    for s in samples:
        assert s["correct"] == (math_accuracy(s["completion"], s["gold"], mode="regex",
                                              pattern=PATTERN) == 1.0)
    assert report["pass@1"] == 0.5 and report["maj@1"] == 0.5
    assert report["no_answer_rate"] == 0.0
    assert np.mean([s["tokens"] for s in samples]) == report["mean_response_tokens"]
    second, samples = read_results(str(tmp_path / "out"), "questions_2")
    assert [s["correct"] for s in samples] == [True] * 3 and second["pass@1"] == 1.0
    with open(tmp_path / "out" / "overall.json") as f:
        overall = json.load(f)
    assert overall["benchmarks"] == ["questions", "questions_2"] and overall["problems"] == 9
    assert overall["weighted"]["pass@1"] == pytest.approx((6 * 0.5 + 3 * 1.0) / 9)
    assert overall["macro"]["pass@1"] == pytest.approx((0.5 + 1.0) / 2)


def test_a_tokenizer_larger_than_the_model_is_refused(run, qwen_tokenizer_dir, tmp_path,
                                                      capsys):
    questions = str(tmp_path / "questions.jsonl")
    write_questions(questions, ["0"] * len(QUESTIONS))
    rc = main([f"--checkpoint={run[0]}", f"--tokenizer={qwen_tokenizer_dir}",
               f"--benchmarks={questions}", "--question_key=q", "--answer_key=a",
               f"--out_dir={tmp_path}/out"])
    assert rc == 2
    assert "the tokenizer has 151665 tokens, more than the vocab_size 20" in \
        capsys.readouterr().err


def test_a_run_config_that_does_not_fit_the_params_is_refused(run, tmp_path, capsys):
    """A checkpoint whose saved config claims hidden_size 48 for 32-wide parameters."""
    saved = run[3]
    bad = dict(RUN, model=dict(RUN["model"], arch=dict(RUN["model"]["arch"], hidden_size=48)))
    checkpointer = Checkpointer(str(tmp_path / "bad" / "checkpoints"), async_save=False)
    checkpointer.save(1, {"params": saved[5]}, {}, {"step": 1, "config": bad})
    checkpointer.close()
    questions = str(tmp_path / "questions.jsonl")
    write_questions(questions, ["0"] * len(QUESTIONS))
    rc = main([f"--checkpoint={tmp_path}/bad", f"--benchmarks={questions}", "--question_key=q",
               "--answer_key=a", f"--out_dir={tmp_path}/out"])
    err = capsys.readouterr().err
    assert rc == 2 and "parameter ['embed'] is saved with shape (20, 32)" in err
    assert "the run's model config gives (20, 48)" in err
