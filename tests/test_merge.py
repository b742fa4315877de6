"""`r1jax-merge` against NumPy computations of the merging formulas written here, transformers
loading the merged directories, hand-computed TIES, and a bound on host memory."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from r1jax import merge as mg
from tests.hf_models import hf_logits, left_padded_batch, make_hf_model

# Merges compute in float32 and the references here in float64 from the same float32 inputs:
# entries of magnitude ~0.1-1 agree to a few float32 ulps.
ATOL = 1e-6
FP32_LOGITS_ATOL = 1e-4


# --- helpers: reading and writing checkpoints with safetensors' torch API (not r1jax's) ---

def load_dir(path) -> dict:
    """{name: (float64 array, dtype name)} of every *.safetensors file in `path`."""
    from safetensors.torch import load_file
    out = {}
    for name in sorted(os.listdir(path)):
        if name.endswith(".safetensors"):
            for key, t in load_file(os.path.join(path, name)).items():
                out[key] = (t.double().numpy(), str(t.dtype).replace("torch.", ""))
    return out


def values(path) -> dict:
    return {k: v for k, (v, _) in load_dir(path).items()}


def save_tensors(path, tensors: dict, config: dict) -> str:
    """A model directory holding `tensors` (name -> torch tensor) in one file and `config`."""
    from safetensors.torch import save_file
    os.makedirs(path, exist_ok=True)
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    return str(path)


def run_cli(*args) -> int:
    return mg.main([str(a) for a in args])


# --- the formulas, written independently of r1jax.merge ---

def ref_linear(models, weights, normalize=True):
    total = sum(w * m for w, m in zip(weights, models))
    return total / sum(weights) if normalize else total


def ref_task_arithmetic(base, models, weights, lam):
    return base + lam * sum(w * (m - base) for w, m in zip(weights, models))


def ref_ties_merge(taus, weights):
    """Sign election by the weighted sum, then the weighted mean of the agreeing entries."""
    t = np.stack([x.ravel() for x in taus])
    w = np.asarray(weights, np.float64)[:, None]
    elected = np.sign((w * t).sum(0))
    agree = (np.sign(t) == elected) & (t != 0)
    num = (w * t * agree).sum(0)
    den = (w * agree).sum(0)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0).reshape(taus[0].shape)


def ref_trim(tau, density):
    """Top-k by magnitude via a full sort, k = round(density * n)."""
    flat = tau.ravel()
    k = int(np.floor(density * flat.size + 0.5))
    keep = np.argsort(-np.abs(flat), kind="stable")[:k]
    out = np.zeros_like(flat)
    out[keep] = flat[keep]
    return out.reshape(tau.shape)


def f32_delta(model, base):
    """The task vector as float32 computes it (the merge's rounding), then widened."""
    return (model.astype(np.float32) - base.astype(np.float32)).astype(np.float64)


# --- fixtures: tiny random Qwen2 models (base + two fine-tunes) ---

def _perturbed(model, seed, scale=0.02):
    import torch
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    """Directories base (one file), ft1 (one file) and ft2 (sharded, with an index)."""
    root = tmp_path_factory.mktemp("qwen")
    make_hf_model("qwen2", seed=0).save_pretrained(root / "base")
    _perturbed(make_hf_model("qwen2", seed=0), 1).save_pretrained(root / "ft1")
    _perturbed(make_hf_model("qwen2", seed=0), 2).save_pretrained(root / "ft2",
                                                                   max_shard_size="100KB")
    assert os.path.exists(root / "ft2" / "model.safetensors.index.json")
    dirs = {k: str(root / k) for k in ("base", "ft1", "ft2")}
    return dirs, {k: values(v) for k, v in dirs.items()}


CASES = {
    "linear": (["--weights", 0.7, 0.3], lambda b, m: ref_linear(m, [0.7, 0.3])),
    "linear_unnormalized": (["--weights", 0.5, 0.8, "--no_normalize"],
                            lambda b, m: ref_linear(m, [0.5, 0.8], normalize=False)),
    "task_arithmetic": (["--base", "BASE", "--weights", 0.6, 1.2, "--lambda", 0.8],
                        lambda b, m: b + 0.8 * sum(w * f32_delta(x, b)
                                                   for w, x in zip([0.6, 1.2], m))),
    "ties": (["--base", "BASE", "--weights", 1.0, 0.5, "--density", 0.3, "--lambda", 1.5],
             lambda b, m: b + 1.5 * ref_ties_merge([ref_trim(f32_delta(x, b), 0.3)
                                                    for x in m], [1.0, 0.5])),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_merged_tensors_equal_the_numpy_formula(qwen, tmp_path, case):
    dirs, vals = qwen
    args, formula = CASES[case]
    args = [dirs["base"] if a == "BASE" else a for a in args]
    method = case.split("_unnormalized")[0]
    out = tmp_path / "out"
    assert run_cli("--method", method, "--models", dirs["ft1"], dirs["ft2"], *args,
                   "--out", out) == 0
    merged = load_dir(out)
    assert sorted(merged) == sorted(vals["base"])
    for name, (got, dtype) in merged.items():
        want = formula(vals["base"][name], [vals["ft1"][name], vals["ft2"][name]])
        assert dtype == "float32"
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL, err_msg=name)
    record = json.loads((out / "merge.json").read_text())
    assert record["method"] == method
    assert record["models"] == [os.path.abspath(dirs["ft1"]), os.path.abspath(dirs["ft2"])]
    # The ties case differs from plain task arithmetic (the trim and election matter).
    if case == "ties":
        ta = ref_task_arithmetic(vals["base"]["lm_head.weight"],
                                 [vals["ft1"]["lm_head.weight"], vals["ft2"]["lm_head.weight"]],
                                 [1.0, 0.5], 1.5)
        assert np.abs(merged["lm_head.weight"][0] - ta).max() > 0.01
        assert record["params"]["density"] == 0.3 and record["params"]["lambda"] == 1.5


def test_bf16_output_is_the_rounded_formula_and_config_says_so(qwen, tmp_path):
    import ml_dtypes
    dirs, vals = qwen
    out = tmp_path / "out"
    assert run_cli("--method", "task_arithmetic", "--base", dirs["base"], "--models",
                   dirs["ft1"], "--dtype", "bfloat16", "--out", out) == 0
    for name, (got, dtype) in load_dir(out).items():
        assert dtype == "bfloat16"
        b = vals["base"][name]
        want = (b + f32_delta(vals["ft1"][name], b)).astype(np.float32)
        # One bf16 rounding of a float32 value: within half a bf16 ulp (2^-8 relative) of it.
        np.testing.assert_allclose(got, want, rtol=2.0**-8, atol=1e-30, err_msg=name)
        rounded = want.astype(ml_dtypes.bfloat16).astype(np.float64)
        assert np.mean(got == rounded) > 0.999, name
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and config["model_type"] == "qwen2"


# --- DARE ---

def _dare(dirs, out, weights, *extra, models=("ft1", "ft2"), p=0.3):
    assert run_cli("--method", "dare", "--base", dirs["base"], "--models",
                   *[dirs[m] for m in models], "--weights", *weights, "--drop_rate", p,
                   *extra, "--out", out) == 0
    return values(out)


def test_dare_keeps_or_drops_each_entry_with_rate_near_p(qwen, tmp_path):
    dirs, vals = qwen
    p = 0.3
    merged = _dare(dirs, tmp_path / "out", [1.0], models=("ft1",), p=p)
    dropped = total = 0
    for name, got in merged.items():
        b = vals["base"][name]
        delta = f32_delta(vals["ft1"][name], b)
        kept = np.isclose(got, b + delta / (1 - p), rtol=0, atol=ATOL)
        gone = got == b
        assert np.all(kept | gone), name
        dropped += gone.sum()
        total += gone.size
    # ~107k entries: the dropped fraction's standard deviation is ~0.0014.
    assert total > 100_000
    assert abs(dropped / total - p) < 0.01


def _masks(dirs, vals, tmp_path):
    """Each model's DARE keep mask, read off single-model merges (the other's weight 0)."""
    masks = []
    for i, weights in enumerate(([1.0, 0.0], [0.0, 1.0])):
        merged = _dare(dirs, tmp_path / f"mask{i}", weights)
        masks.append({k: got != vals["base"][k] for k, got in merged.items()})
    return masks


def test_dare_combines_the_dropped_deltas_by_task_arithmetic(qwen, tmp_path):
    dirs, vals = qwen
    p, w, lam = 0.3, [0.6, 0.8], 0.9
    masks = _masks(dirs, vals, tmp_path)
    merged = _dare(dirs, tmp_path / "out", w, "--scale", lam)  # --scale: alias of --lambda
    for name, got in merged.items():
        b = vals["base"][name]
        dared = [m[name] * f32_delta(vals[k][name], b) / (1 - p)
                 for m, k in zip(masks, ("ft1", "ft2"))]
        want = b + lam * (w[0] * dared[0] + w[1] * dared[1])
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL, err_msg=name)
    # The two models' masks are independent draws.
    agree = np.mean(masks[0]["lm_head.weight"] == masks[1]["lm_head.weight"])
    assert abs(agree - (0.7 ** 2 + 0.3 ** 2)) < 0.02


def test_dare_ties_elects_signs_over_the_dropped_deltas(qwen, tmp_path):
    dirs, vals = qwen
    p, w = 0.3, [1.0, 2.0]
    masks = _masks(dirs, vals, tmp_path)
    out = tmp_path / "out"
    assert run_cli("--method", "dare_ties", "--base", dirs["base"], "--models", dirs["ft1"],
                   dirs["ft2"], "--weights", *w, "--drop_rate", p, "--out", out) == 0
    for name, got in values(out).items():
        b = vals["base"][name]
        dared = [m[name] * f32_delta(vals[k][name], b) / (1 - p)
                 for m, k in zip(masks, ("ft1", "ft2"))]
        np.testing.assert_allclose(got, b + ref_ties_merge(dared, w), rtol=0, atol=ATOL,
                                   err_msg=name)


def test_dare_is_reproducible_by_seed_and_independent_of_tensor_order(qwen, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file
    dirs, vals = qwen
    first = _dare(dirs, tmp_path / "a", [1.0, 1.0], "--seed", 7)
    again = _dare(dirs, tmp_path / "b", [1.0, 1.0], "--seed", 7)
    other = _dare(dirs, tmp_path / "c", [1.0, 1.0], "--seed", 8)
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
    assert np.mean(first["lm_head.weight"] == other["lm_head.weight"]) < 0.9
    # ft1 rewritten as three shards holding its tensors in reverse order.
    shuffled = tmp_path / "ft1_shuffled"
    shutil.copytree(dirs["ft1"], shuffled)
    tensors = load_file(str(shuffled / "model.safetensors"))
    os.remove(shuffled / "model.safetensors")
    names = sorted(tensors, reverse=True)
    weight_map = {}
    for i, part in enumerate(np.array_split(np.array(names), 3)):
        fname = f"model-{i + 1:05d}-of-00003.safetensors"
        save_file({n: tensors[n].contiguous() for n in part}, str(shuffled / fname),
                  metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    (shuffled / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": weight_map}))
    dirs2 = dict(dirs, ft1=str(shuffled))
    reordered = _dare(dirs2, tmp_path / "d", [1.0, 1.0], "--seed", 7)
    for name in first:
        np.testing.assert_array_equal(first[name], reordered[name])
    assert torch.equal(tensors["lm_head.weight"],
                       torch.from_numpy(vals["ft1"]["lm_head.weight"]).float())


# --- TIES by hand ---

def test_ties_on_a_hand_computed_case(tmp_path):
    import torch
    cfg = {"model_type": "toy", "architectures": ["ToyForCausalLM"], "hidden_size": 5}
    base_a = np.ones(5)
    taus_a = [[3, -1, 2, 0.5, -4], [-2, 0.1, 5, -3, 1], [1.5, -6, -1, 2, 0.2]]
    taus_b = [[2, 1, 0, 0, 0], [-2, 0, 0, 0, 0], [0, 0, 0, 0, 0]]
    ids = torch.tensor([7, -3, 2**40], dtype=torch.int64)  # integer buffers are copied
    base = save_tensors(tmp_path / "base", {
        "a": torch.tensor(base_a, dtype=torch.bfloat16),
        "b": torch.zeros(1, 5, dtype=torch.float32), "ids": ids}, cfg)
    models = [save_tensors(tmp_path / f"m{i}", {
        "a": torch.tensor(base_a + ta, dtype=torch.bfloat16),
        "b": torch.tensor([tb], dtype=torch.float32), "ids": ids}, cfg)
        for i, (ta, tb) in enumerate(zip(taus_a, taus_b))]
    out = tmp_path / "out"
    assert run_cli("--method", "ties", "--base", base, "--models", *models, "--density", 0.6,
                   "--lambda", 0.5, "--out", out) == 0
    merged = load_dir(out)
    # a: k = 3 of 5. Trimmed: [3,0,2,0,-4], [-2,0,5,-3,0], [1.5,-6,0,2,0]; sum [2.5,-6,7,-1,-4]
    # elects [+,-,+,-,-]; agreeing means [(3+1.5)/2, -6, (2+5)/2, -3, -4] = [2.25,-6,3.5,-3,-4];
    # base 1 + 0.5 x that.
    assert merged["a"][1] == "bfloat16"
    np.testing.assert_array_equal(merged["a"][0], [2.125, -2.0, 2.75, -0.5, -1.0])
    # b: entry 0 sums to 0 (no elected sign: stays at the base), entry 1 only model 0 moves.
    assert merged["b"][1] == "float32"
    np.testing.assert_array_equal(merged["b"][0], [[0.0, 0.5, 0.0, 0.0, 0.0]])
    assert merged["ids"][1] == "int64" and merged["ids"][0].tolist() == [7, -3, 2**40]
    assert not os.path.exists(out / "model.safetensors.index.json")


def test_differing_integer_tensor_is_refused_midway_leaving_no_output(tmp_path, capsys):
    import torch
    cfg = {"model_type": "toy"}
    tensors = {f"w{i}": torch.full((4,), float(i)) for i in range(6)}
    base = save_tensors(tmp_path / "base", dict(tensors, w3_ids=torch.arange(4)), cfg)
    other = save_tensors(tmp_path / "other", dict(tensors, w3_ids=torch.arange(1, 5)), cfg)
    err = _refused(capsys, tmp_path, "--method", "task_arithmetic", "--base", base,
                   "--models", other, "--max_shard_bytes", 40)
    assert "tensor 'w3_ids' (I64) differs" in err
    assert sorted(os.listdir(tmp_path)) == ["base", "other"]


# --- loading in transformers and r1jax ---

def _copy_tokenizer(src, dst):
    for name in os.listdir(src):
        shutil.copy(os.path.join(src, name), dst)


@pytest.mark.parametrize("family,method", [("qwen2", "ties"), ("llama", "linear")])
def test_merged_directory_loads_in_transformers_with_r1jax_logits(
        family, method, tmp_path, qwen_tokenizer_dir):
    import jax.numpy as jnp
    import transformers

    import r1jax
    dirs = []
    for i in range(3):
        model = make_hf_model(family, seed=0)
        if i:
            _perturbed(model, 10 + i, scale=0.05)
        model.save_pretrained(tmp_path / f"m{i}", max_shard_size="100KB")
        dirs.append(str(tmp_path / f"m{i}"))
    _copy_tokenizer(qwen_tokenizer_dir, dirs[0] if method == "ties" else dirs[1])
    if method == "ties":
        args = ["--base", dirs[0], "--models", dirs[1], dirs[2], "--density", 0.5]
        ref_dir = dirs[0]
    else:
        args = ["--models", dirs[1], dirs[2]]
        ref_dir = dirs[1]
        # The second model's tokenizer differs: the output takes the first model's.
        (tmp_path / "m2" / "tokenizer_config.json").write_text("{}")
    out = tmp_path / "merged"
    assert run_cli("--method", method, *args, "--max_shard_bytes", 60_000, "--out", out) == 0
    assert os.path.exists(out / "model.safetensors.index.json")
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / name).read_bytes() == open(os.path.join(ref_dir, name), "rb").read()
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    assert tok("1+1=2")["input_ids"] == transformers.AutoTokenizer.from_pretrained(
        ref_dir)("1+1=2")["input_ids"]

    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    tokens, mask, positions = left_padded_batch()
    ref = hf_logits(hf, tokens, mask, positions)
    sources = [hf_logits(transformers.AutoModelForCausalLM.from_pretrained(d).eval(), tokens,
                         mask, positions) for d in dirs[1:]]
    real = mask.astype(bool)
    assert all(np.abs(ref - s)[real].max() > 1e-3 for s in sources)  # a new model
    model = r1jax.load_hf(str(out))
    got = np.asarray(model(jnp.asarray(tokens), attention_mask=jnp.asarray(mask)))
    assert np.abs(got - ref)[real].max() <= FP32_LOGITS_ATOL


# --- refusals ---

@pytest.fixture(scope="module")
def other_arch(tmp_path_factory):
    root = tmp_path_factory.mktemp("other")
    make_hf_model("llama").save_pretrained(root / "llama")
    make_hf_model("qwen2", layers=1).save_pretrained(root / "qwen_1layer")
    return {k: str(root / k) for k in ("llama", "qwen_1layer")}


def _refused(capsys, tmp_path, *args) -> str:
    out = tmp_path / "refused"
    assert run_cli(*args, "--out", out) == 2
    assert not os.path.exists(out)
    assert [p for p in os.listdir(tmp_path) if ".tmp-" in p] == []
    return capsys.readouterr().err


def test_mismatched_architectures_are_refused_naming_the_field(qwen, other_arch, tmp_path,
                                                              capsys):
    dirs, _ = qwen
    err = _refused(capsys, tmp_path, "--method", "linear", "--models", dirs["ft1"],
                   other_arch["llama"])
    assert "'model_type'" in err and "'qwen2'" in err and "'llama'" in err
    err = _refused(capsys, tmp_path, "--method", "ties", "--base", dirs["base"], "--models",
                   other_arch["qwen_1layer"], "--density", 0.5)
    assert "'num_hidden_layers'" in err and other_arch["qwen_1layer"] in err


def test_mismatched_tensors_are_refused_naming_the_tensor(qwen, tmp_path, capsys):
    from safetensors.torch import load_file
    dirs, _ = qwen
    cfg = json.loads(open(os.path.join(dirs["ft1"], "config.json")).read())
    tensors = load_file(os.path.join(dirs["ft1"], "model.safetensors"))
    bad = "model.layers.1.mlp.up_proj.weight"
    reshaped = dict(tensors, **{bad: tensors[bad].reshape(64, 128).contiguous()})
    wrong_shape = save_tensors(tmp_path / "wrong_shape", reshaped, cfg)
    err = _refused(capsys, tmp_path, "--method", "task_arithmetic", "--base", dirs["base"],
                   "--models", wrong_shape)
    assert f"tensor '{bad}' has shape [64, 128]" in err and "[128, 64]" in err
    missing = save_tensors(tmp_path / "missing", {k: v for k, v in tensors.items()
                                                  if k != "model.norm.weight"}, cfg)
    err = _refused(capsys, tmp_path, "--method", "linear", "--models", dirs["ft1"], missing)
    assert "tensor 'model.norm.weight'" in err and "missing from" in err


@pytest.mark.parametrize("args,message", [
    (["--method", "linear", "--base", "B", "--models", "M", "M"], "--base is not used"),
    (["--method", "linear", "--models", "M"], "at least two"),
    (["--method", "ties", "--models", "M", "M"], "needs --base"),
    (["--method", "ties", "--base", "B", "--models", "M"], "needs --density"),
    (["--method", "ties", "--base", "B", "--models", "M", "--density", "1.5"],
     "--density 1.5 is not in (0, 1]"),
    (["--method", "ties", "--base", "B", "--models", "M", "--density", "0.5",
      "--weights", "0"], "positive --weights"),
    (["--method", "dare", "--base", "B", "--models", "M"], "needs --drop_rate"),
    (["--method", "dare", "--base", "B", "--models", "M", "--drop_rate", "1"],
     "--drop_rate 1.0 is not in [0, 1)"),
    (["--method", "task_arithmetic", "--base", "B", "--models", "M", "--density", "0.5"],
     "--density does not apply to --method task_arithmetic"),
    (["--method", "ties", "--base", "B", "--models", "M", "--density", "0.5", "--seed", "1"],
     "--seed does not apply"),
    (["--method", "linear", "--models", "M", "M", "--lambda", "2"], "--lambda does not apply"),
    (["--method", "task_arithmetic", "--base", "B", "--models", "M", "--no_normalize"],
     "--no_normalize does not apply"),
    (["--method", "task_arithmetic", "--base", "B", "--models", "M", "M", "--weights", "1"],
     "--weights has 1 values for 2 --models"),
    (["--method", "linear", "--models", "M", "M", "--weights", "1", "-1"], "sum to 0"),
    (["--method", "linear", "--models", "M", "M", "--max_shard_bytes", "0"],
     "--max_shard_bytes 0 must be positive"),
    (["--method", "linear", "--models", "M", "/nonexistent/model"],
     "model directory does not exist: /nonexistent/model"),
])
def test_bad_option_combinations_are_refused(qwen, tmp_path, capsys, args, message):
    dirs, _ = qwen
    args = [dirs["base"] if a == "B" else dirs["ft1"] if a == "M" else a for a in args]
    assert message in _refused(capsys, tmp_path, *args)


def test_a_recipe_file_gives_settings_that_options_override(qwen, tmp_path, capsys):
    """--recipe FILE:ARG: its get_config(ARG) settings; a command-line option wins; an
    unknown key, a missing file or a missing required setting is refused."""
    dirs, vals = qwen
    recipe = tmp_path / "recipe.py"
    recipe.write_text(
        "def get_config(arg=''):\n"
        f"    c = dict(method='linear', models=[{dirs['ft1']!r}, {dirs['ft2']!r}],\n"
        f"             weights=[3.0, 1.0], out={str(tmp_path / 'from_recipe')!r})\n"
        "    if arg == 'bad':\n"
        "        c['densty'] = 0.5\n"
        "    return c\n")
    assert run_cli("--recipe", recipe) == 0
    name = "model.layers.0.mlp.up_proj.weight"
    got = load_dir(tmp_path / "from_recipe")[name][0]
    np.testing.assert_allclose(got, ref_linear([vals["ft1"][name], vals["ft2"][name]],
                                               [3.0, 1.0]), rtol=0, atol=ATOL)
    assert run_cli("--recipe", recipe, "--weights", "1", "1", "--out", tmp_path / "o2") == 0
    got = load_dir(tmp_path / "o2")[name][0]
    np.testing.assert_allclose(got, ref_linear([vals["ft1"][name], vals["ft2"][name]],
                                               [1.0, 1.0]), rtol=0, atol=ATOL)
    capsys.readouterr()
    assert run_cli("--recipe", f"{recipe}:bad") == 2
    assert "unknown keys ['densty']" in capsys.readouterr().err
    assert run_cli("--recipe", tmp_path / "none.py") == 2
    assert "merge recipe not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli("--models", dirs["ft1"], dirs["ft2"], "--out", tmp_path / "o3")
    assert "--method required" in capsys.readouterr().err


def test_existing_or_input_output_directory_is_refused(qwen, tmp_path, capsys):
    dirs, _ = qwen
    (tmp_path / "refused").mkdir()
    assert run_cli("--method", "linear", "--models", dirs["ft1"], dirs["ft2"], "--out",
                   tmp_path / "refused") == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert run_cli("--method", "linear", "--models", dirs["ft1"], dirs["ft2"], "--out",
                   dirs["ft1"], "--overwrite") == 2
    assert "is one of the input models" in capsys.readouterr().err
    assert run_cli("--method", "linear", "--models", dirs["ft1"], dirs["ft2"], "--out",
                   tmp_path / "refused", "--overwrite") == 0
    assert json.loads((tmp_path / "refused" / "merge.json").read_text())["method"] == "linear"


# --- atomic output ---

def test_failure_midway_leaves_no_partial_output(qwen, tmp_path, monkeypatch):
    dirs, vals = qwen
    calls = []
    read = mg.read_tensor

    def failing_read(info):
        calls.append(info.name)
        if len(calls) == 20:
            raise OSError("disk read failed")
        return read(info)

    monkeypatch.setattr(mg, "read_tensor", failing_read)
    spec = mg.MergeSpec("task_arithmetic", (dirs["ft1"],), base=dirs["base"])
    with pytest.raises(OSError, match="disk read failed"):
        mg.merge(spec, str(tmp_path / "new"))
    assert os.listdir(tmp_path) == []
    # Replacing an existing output: the old one survives a failed merge untouched.
    old = tmp_path / "old"
    old.mkdir()
    (old / "marker").write_text("previous")
    calls.clear()
    with pytest.raises(OSError):
        mg.merge(spec, str(old), overwrite=True, max_shard_bytes=50_000)
    assert sorted(os.listdir(tmp_path)) == ["old"] and os.listdir(old) == ["marker"]
    monkeypatch.setattr(mg, "read_tensor", read)
    mg.merge(spec, str(old), overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["old"] and not (old / "marker").exists()
    np.testing.assert_array_equal(values(old)["model.norm.weight"],
                                  vals["ft1"]["model.norm.weight"])


# --- host memory ---

_MIB = 2**20
TENSORS, TENSOR_SHAPE = 32, (1024, 1024)  # 32 float32 tensors of 4 MiB: 128 MiB a model
# Loading whole models would take >= 3 x 128 MiB; tensor by tensor, TIES holds the base, two
# task vectors and a few temporaries of one 4 MiB tensor (~40 MiB measured).
PEAK_GROWTH_BOUND_MIB = 64


def _start(code: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(__file__)))


def _peak_rss_mib(proc: subprocess.Popen) -> float:
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    return int(stdout.strip().splitlines()[-1]) / 1024  # VmHWM is in KiB


def _big_tensor(model: int, i: int) -> np.ndarray:
    x = np.random.default_rng([model, i]).random(TENSOR_SHAPE, dtype=np.float32)
    x -= 0.5
    return x


def test_peak_host_memory_stays_near_one_tensor_per_input(tmp_path):
    from safetensors.numpy import save_file
    dirs = []
    for m in range(3):
        path = tmp_path / f"big{m}"
        path.mkdir()
        (path / "config.json").write_text(json.dumps({"model_type": "toy"}))
        weight_map = {}
        for shard in range(2):  # two files of 64 MiB, with an index
            fname = f"model-{shard + 1:05d}-of-00002.safetensors"
            names = [f"w{i:02d}" for i in range(shard * TENSORS // 2, (shard + 1) * TENSORS // 2)]
            save_file({n: _big_tensor(m, int(n[1:])) for n in names}, str(path / fname))
            weight_map.update({n: fname for n in names})
        (path / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {}, "weight_map": weight_map}))
        dirs.append(str(path))
    model_mib = TENSORS * np.prod(TENSOR_SHAPE) * 4 / _MIB
    assert model_mib == 128
    # The peak resident set of the child's own address space (VmHWM). ru_maxrss would not do:
    # Linux carries it over from the forking parent through exec, so a child of this test
    # process would report at least this process's resident set.
    report = ("print([l.split()[1] for l in open('/proc/self/status') "
              "if l.startswith('VmHWM:')][0])")
    baseline = _start(f"import r1jax.merge\n{report}")
    out = tmp_path / "out"
    merging = _start(
        f"import sys, r1jax.merge\nassert r1jax.merge.main(sys.argv[1:]) == 0\n{report}",
        "--method", "ties", "--base", dirs[0], "--models", *dirs[1:], "--density", 0.2,
        "--out", out, "--max_shard_bytes", 50 * _MIB)
    peak, base = _peak_rss_mib(merging), _peak_rss_mib(baseline)
    assert peak - base < PEAK_GROWTH_BOUND_MIB, (peak, base)
    assert len([f for f in os.listdir(out) if f.endswith(".safetensors")]) == 3
    # Spot-check one merged tensor against the formula (the whole output is 128 MiB).
    from safetensors import safe_open
    with safe_open(str(out / "model-00001-of-00003.safetensors"), "numpy") as f:
        got = f.get_tensor("w00")
    rows = [_big_tensor(m, 0).astype(np.float64) for m in range(3)]
    taus = [ref_trim(f32_delta(r, rows[0]), 0.2) for r in rows[1:]]
    np.testing.assert_allclose(got, rows[0] + ref_ties_merge(taus, [1.0, 1.0]), rtol=0,
                               atol=ATOL)
