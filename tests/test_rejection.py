"""`r1jax-rejection-sample` end to end with a Qwen2 policy over the full Qwen2.5 vocabulary
whose every completion is one of three known texts (a bigram walk that branches once), graded
by the real math-verify in the reward pool: the SFT file holds exactly the verified
completions, pass rates equal a count made here with math-verify directly, keep policies and
the pass-rate range select what they say, and interrupted runs (a doctored progress record
and a real SIGKILL) resume without duplicates or losses."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import math_verify
import pytest

from r1jax import builder
from r1jax.config import load_config
from r1jax.data import DataError, load_source
from r1jax.data.pass_rates import filter_by_pass_rate, read_pass_rates
from r1jax.rejection import FILES, main, select_kept
from tests.hf_models import write_bigram_model

# After the prompt ("...assistant\n"): "The answer is $\boxed{" then 3, 03 or 12, each with
# probability 1/3, then "}$." and <|im_end|>.
TEXTS = {"3": "The answer is $\\boxed{3}$.", "03": "The answer is $\\boxed{03}$.",
         "12": "The answer is $\\boxed{12}$."}
GOLDS = ["3", "12", "7"] * 4  # 12 problems: pass rates near 2/3, 1/3 and exactly 0
K, BATCH = 6, 4


def test_select_kept_by_hand():
    correct, lengths = [False, True, True, False, True], [5, 9, 4, 1, 4]
    assert select_kept(correct, lengths, "all", 0, 3) == [1, 2, 4]
    assert select_kept(correct, lengths, "shortest", 0, 3) == [2]  # 4 tokens, lowest index
    assert select_kept([False] * 3, [1, 2, 3], "shortest", 0, 0) == []
    picks = {select_kept(correct, lengths, "random", seed, 3)[0] for seed in range(40)}
    assert picks == {1, 2, 4}  # every correct sample can be drawn, nothing else
    assert select_kept(correct, lengths, "random", 7, 3) == select_kept(correct, lengths,
                                                                         "random", 7, 3)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, qwen_tokenizer_dir):
    import transformers
    tok = transformers.AutoTokenizer.from_pretrained(qwen_tokenizer_dir)
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    start = enc("assistant\n")[-1]
    prefix = enc("The answer is $\\boxed{")
    brace, close = prefix[-1], enc("}$.")
    zero, one, two, three = (enc(d)[0] for d in "0123")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    chain = [start] + prefix
    edges = {a: [b] for a, b in zip(chain[:-1], chain[1:])}
    edges.update({brace: [three, zero, one], zero: [three], one: [two], three: [close[0]],
                  two: [close[0]]})
    edges.update({a: [b] for a, b in zip(close, close[1:] + [im_end])})
    for text in TEXTS.values():  # the graph spells exactly these texts
        assert enc(text) == prefix + enc(text)[len(prefix):]
    root = tmp_path_factory.mktemp("rejection")
    model = root / "bigram"
    write_bigram_model(model, qwen_tokenizer_dir, edges)
    data = root / "problems.jsonl"
    with open(data, "w") as f:
        for i, gold in enumerate(GOLDS):
            f.write(json.dumps({"unique_id": f"p{i}", "problem": f"Problem {i}: what is it?",
                                "answer": gold}) + "\n")
    return root, str(model), str(data)


def flags(setup, out, *extra):
    _, model, data = setup
    return [f"--model={model}", f"--data={data}", "--recipe=math500", "--template=qwen_math", f"--k={K}", "--temperature=1.0",
            "--max_new_tokens=16", f"--batch_size={BATCH}", "--mesh=1,1,1", "--seed=5",
            f"--out_dir={out}", *extra]


def read(out, name):
    with open(os.path.join(out, name)) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def full(setup):
    out = str(setup[0] / "full")
    assert main(flags(setup, out)) == 0
    return out


def verdict(completion, gold):
    return bool(math_verify.verify(math_verify.parse(f"${gold}$"),
                                   math_verify.parse(completion)))


def test_writes_exactly_the_verified_completions_and_hand_counted_pass_rates(full):
    samples = read(full, "samples.jsonl")
    assert len(samples) == len(GOLDS) * K
    assert {s["completion"] for s in samples} == set(TEXTS.values())  # all three branches
    counted = {}
    for s in samples:
        gold = GOLDS[s["prompt_index"]]
        assert s["correct"] == verdict(s["completion"], gold)
        counted.setdefault(s["id"], []).append(s["correct"])
    rates = read(full, "pass_rates.jsonl")
    assert [r["id"] for r in rates] == [f"p{i}" for i in range(len(GOLDS))]
    for r in rates:
        assert (r["samples"], r["correct"]) == (K, sum(counted[r["id"]]))
        assert r["pass_rate"] == sum(counted[r["id"]]) / K
    assert all(r["correct"] == 0 for r in rates if GOLDS[r["prompt_index"]] == "7")
    assert sum(r["correct"] for r in rates) > 0
    sft = read(full, "sft.jsonl")
    expected = [(s["id"], s["sample"]) for s in samples if s["correct"]]
    assert [(r["id"], r["sample"]) for r in sft] == expected
    by_key = {(s["id"], s["sample"]): s for s in samples}
    for row in sft:
        user, assistant = row["messages"][-2:]
        assert user == {"role": "user", "content": f"Problem {row['prompt_index']}: what is it?"}
        assert assistant == {"role": "assistant",
                             "content": by_key[(row["id"], row["sample"])]["completion"]}
        assert row["verdicts"]["accuracy"] > 0
        assert row["provenance"]["temperature"] == 1.0 and row["provenance"]["keep"] == "all"
    with open(os.path.join(full, "summary.json")) as f:
        summary = json.load(f)
    assert summary["complete"] and summary["kept"] == len(sft)
    assert summary["correct"] == len(expected) and summary["samples"] == len(samples)


def test_keep_shortest_random_and_the_pass_rate_range(setup, full):
    samples = read(full, "samples.jsonl")
    out = str(setup[0] / "shortest")
    assert main(flags(setup, out, "--keep=shortest", "--pass_rate_min=0.2",
                      "--pass_rate_max=0.9")) == 0
    assert read(out, "samples.jsonl") == samples  # sampling does not depend on selection
    rates = {r["prompt_index"]: r["pass_rate"] for r in read(full, "pass_rates.jsonl")}
    sft = read(out, "sft.jsonl")
    in_range = [p for p, rate in rates.items() if 0.2 <= rate <= 0.9]
    assert [r["prompt_index"] for r in sft] == in_range
    for row in sft:
        mine = [s for s in samples if s["prompt_index"] == row["prompt_index"] and s["correct"]]
        best = min(mine, key=lambda s: (s["tokens"], s["sample"]))
        assert row["sample"] == best["sample"]
        if any(s["completion"] == TEXTS["3"] for s in mine):
            assert row["messages"][-1]["content"] == TEXTS["3"]  # "3" beats "03"
    out = str(setup[0] / "random")
    assert main(flags(setup, out, "--keep=random")) == 0
    sft = read(out, "sft.jsonl")
    solved = sorted({s["prompt_index"] for s in samples if s["correct"]})
    assert [r["prompt_index"] for r in sft] == solved
    assert all(r["verdicts"]["accuracy"] > 0 for r in sft)


def test_history_resampling_retries_only_unsolved_prompts(setup):
    out = str(setup[0] / "resample")
    assert main(flags(setup, out, "--resample_failed=2")) == 0
    rates = read(out, "pass_rates.jsonl")
    samples = read(out, "samples.jsonl")
    for r in rates:
        mine = [s for s in samples if s["prompt_index"] == r["prompt_index"]]
        rounds = sorted({s["round"] for s in mine})
        assert r["samples"] == len(mine) == K * len(rounds) == K * r["rounds"]
        assert r["correct"] == sum(s["correct"] for s in mine)
        solved_in = [s["round"] for s in mine if s["correct"]]
        # rounds continue exactly until a round has a correct sample, at most 3 rounds
        assert len(rounds) == (min(solved_in) + 1 if solved_in else 3)
        if GOLDS[r["prompt_index"]] == "7":
            assert r["rounds"] == 3 and r["pass_rate"] == 0.0


def test_a_doctored_interruption_resumes_without_duplicates_or_losses(setup, full):
    out = str(setup[0] / "doctored")
    shutil.copytree(full, out)
    done = BATCH  # as if killed after the first batch's record, mid-way through the second
    with open(os.path.join(out, "progress.json")) as f:
        progress = json.load(f)
    offsets = {}
    for name in FILES:
        rows = read(full, name)
        keep = [r for r in rows if r["prompt_index"] < done]
        offsets[name] = sum(len((json.dumps(r, ensure_ascii=False) + "\n").encode())
                            for r in keep)
        with open(os.path.join(out, name), "r+b") as f:
            f.truncate(offsets[name])
            f.seek(0, 2)
            f.write(b'{"half a line')  # what a kill during a write leaves
    counts = {k: 0 for k in progress["counts"]}
    progress.update(done=done, offsets=offsets, counts=dict(counts, samples=done * K))
    with open(os.path.join(out, "progress.json"), "w") as f:
        json.dump(progress, f)
    assert main(flags(setup, out)) == 0
    for name in FILES:
        assert read(out, name) == read(full, name), name


def test_sigkill_then_rerun_equals_an_uninterrupted_run(setup, full, tmp_path):
    out = str(tmp_path / "killed")
    cmd = [sys.executable, "-m", "r1jax.rejection", *flags(setup, out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=os.environ.copy())
    killed_at = None
    try:
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with open(os.path.join(out, "progress.json")) as f:
                    done = json.load(f)["done"]
            except (OSError, ValueError):
                done = 0
            if done >= BATCH:
                proc.send_signal(signal.SIGKILL)
                killed_at = done
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
    assert killed_at is not None and killed_at < len(GOLDS), "the run ended before the kill"
    assert main(flags(setup, out)) == 0
    for name in FILES:
        assert read(out, name) == read(full, name), name


def test_a_resume_with_other_flags_is_refused_naming_them(setup, full, tmp_path, capsys):
    out = str(tmp_path / "changed")
    shutil.copytree(full, out)
    assert main(flags(setup, out, "--temperature=0.7")) == 2
    assert "temperature" in capsys.readouterr().err
    assert main(flags(setup, out, "--k=0")) == 2
    assert "--k must be >= 1" in capsys.readouterr().err
    assert main([f"--model={setup[1]}", "--k=2", f"--out_dir={out}"]) == 2
    assert "--data" in capsys.readouterr().err


def test_training_prompts_filtered_by_pass_rate(setup, full):
    path = os.path.join(full, "pass_rates.jsonl")
    rates = read_pass_rates(path)
    cfg = load_config("configs/grpo_qwen2_5_math_1_5b_gsm8k.py", [
        f"data.source={setup[2]}", "data.recipe=math500", "data.pass_rates=" + path,
        "data.pass_rate_min=0.1", "data.pass_rate_max=0.9"])
    source = builder.build_train_source(cfg.data)
    assert [e["id"] for e in source.examples] == [k for k, v in rates.items()
                                                  if 0.1 <= v <= 0.9]
    assert source.stats.skipped["pass_rate_out_of_range"] == sum(
        not 0.1 <= v <= 0.9 for v in rates.values())
    with pytest.raises(DataError, match="no example has a pass rate"):
        filter_by_pass_rate(load_source(setup[2], recipe="math500"), path, 0.95, 1.0)


@pytest.mark.parametrize("devices", [1, 8])
def test_r1jax_train_keeps_the_pass_rate_range_from_the_command_line(tmp_path, data_dir,
                                                                     devices):
    """configs/demo_cpu.py:tiny with data.pass_rates: 64 hand-made rates i / 64 for the
    first 64 generated sums; [0.25, 0.75] keeps i = 16 .. 48, every other sum has no rate."""
    from tests.xla_env import cpu_xla_flags
    rates = tmp_path / "pass_rates.jsonl"
    rates.write_text("".join(json.dumps({"id": f"arith-train-{i}", "pass_rate": i / 64}) + "\n"
                             for i in range(64)))
    env = dict(os.environ, R1JAX_DATA_DIR=data_dir, JAX_PLATFORMS="cpu",
               XLA_FLAGS=cpu_xla_flags(devices))
    run_dir = tmp_path / "run"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "r1jax-train"),
         "--config=configs/demo_cpu.py:tiny", f"--config.train.run_dir={run_dir}",
         "--config.train.progress_bar=False", "--config.train.export_hf=False",
         f"--config.data.pass_rates={rates}", "--config.data.pass_rate_min=0.25",
         "--config.data.pass_rate_max=0.75"],
        cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(run_dir / "summary.json") as f:
        data = json.load(f)["data"]
    assert data["kept"] == 33
    assert data["skipped"]["pass_rate_out_of_range"] == 64 - 33
    assert data["skipped"]["no_pass_rate"] == data["rows"] - 64
