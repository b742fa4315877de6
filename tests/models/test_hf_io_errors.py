"""Bad inputs to load_hf / save_hf: clear errors naming the file and tensor, nothing written."""

import json
import os

import numpy as np
import pytest

import r1jax
from r1jax.models import safetensors_io as st
from tests.hf_models import make_hf_model


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("good")
    make_hf_model("qwen2").save_pretrained(path)
    return str(path)


def copy_dir(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return str(dst)


def rewrite_tensor(path, name, new_array):
    """Rewrites model.safetensors with one tensor replaced (names/dtypes of the rest kept)."""
    reader = st.TensorReader(path)
    arrays = {n: np.array(reader.view(n)) for n in reader.infos}
    del reader
    arrays[name] = new_array
    os.remove(os.path.join(path, "model.safetensors"))
    st.write_sharded(path, [(n, a.shape, a.dtype, (lambda a=a: a)) for n, a in arrays.items()])


def test_nonexistent_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="model directory does not exist"):
        r1jax.load_hf(str(tmp_path / "nope"))


def test_missing_config_json(good_dir, tmp_path):
    path = copy_dir(good_dir, tmp_path / "m")
    os.remove(os.path.join(path, "config.json"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        r1jax.load_hf(path)


def test_missing_safetensors_file(good_dir, tmp_path):
    path = copy_dir(good_dir, tmp_path / "m")
    os.remove(os.path.join(path, "model.safetensors"))
    with pytest.raises(st.CheckpointError, match="no model.safetensors"):
        r1jax.load_hf(path)


def test_missing_shard_named_by_index(good_dir, tmp_path):
    path = copy_dir(good_dir, tmp_path / "m")
    index = {"metadata": {}, "weight_map": {"model.embed_tokens.weight":
                                            "model-00001-of-00002.safetensors"}}
    with open(os.path.join(path, st.INDEX_FILE), "w") as f:
        json.dump(index, f)
    with pytest.raises(st.CheckpointError, match="model-00001-of-00002.safetensors"):
        r1jax.load_hf(path)


def test_tensor_of_wrong_shape_names_file_and_tensor(good_dir, tmp_path):
    path = copy_dir(good_dir, tmp_path / "m")
    rewrite_tensor(path, "model.layers.1.mlp.up_proj.weight", np.zeros((100, 64), np.float32))
    with pytest.raises(st.CheckpointError,
                       match=r"model.safetensors: tensor 'model.layers.1.mlp.up_proj.weight' "
                             r"has shape \[100, 64\], expected \[128, 64\]"):
        r1jax.load_hf(path)


def test_unconvertible_dtype_names_tensor(good_dir, tmp_path):
    path = copy_dir(good_dir, tmp_path / "m")
    rewrite_tensor(path, "model.norm.weight", np.zeros((64,), np.int32))
    with pytest.raises(st.CheckpointError, match="'model.norm.weight' has dtype I32"):
        r1jax.load_hf(path)


def test_missing_and_unexpected_tensors(good_dir, tmp_path):
    path = copy_dir(good_dir, tmp_path / "m")
    rewrite_tensor(path, "model.layers.0.mlp.experts.0.up_proj.weight", np.zeros((2, 2)))
    with pytest.raises(st.CheckpointError, match="unexpected tensor 'model.layers.0.mlp.exp"):
        r1jax.load_hf(path)
    cfg = json.load(open(os.path.join(path, "config.json")))
    cfg["num_hidden_layers"] = 3
    json.dump(cfg, open(os.path.join(path, "config.json"), "w"))
    with pytest.raises(st.CheckpointError, match="'model.layers.2.input_layernorm.weight' "
                                                 "is missing"):
        r1jax.load_hf(path)


def test_truncated_file(good_dir, tmp_path):
    path = copy_dir(good_dir, tmp_path / "m")
    f = os.path.join(path, "model.safetensors")
    with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) - 100)
    with pytest.raises(st.CheckpointError, match="truncated"):
        r1jax.load_hf(path)


def test_unknown_architecture(good_dir, tmp_path):
    path = copy_dir(good_dir, tmp_path / "m")
    cfg = json.load(open(os.path.join(path, "config.json")))
    cfg.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    json.dump(cfg, open(os.path.join(path, "config.json"), "w"))
    with pytest.raises(r1jax.UnsupportedModelError, match="'model_type' = 'gpt2'"):
        r1jax.load_hf(path)


def test_failed_save_leaves_no_output_and_keeps_old_model(good_dir, tmp_path, monkeypatch):
    model = r1jax.load_hf(good_dir)
    out = tmp_path / "export"
    with pytest.raises(ValueError, match="save dtype 'int8'"):
        r1jax.save_hf(model, str(out), dtype="int8")
    assert not out.exists() and os.listdir(tmp_path) == []

    r1jax.save_hf(model, str(out))
    before = {p: open(out / p, "rb").read() for p in os.listdir(out)}

    def boom(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(st, "_write_file", boom)
    with pytest.raises(OSError, match="disk full"):
        r1jax.save_hf(model, str(out), dtype="bfloat16")
    after = {p: open(out / p, "rb").read() for p in os.listdir(out)}
    assert after == before  # the good export is untouched
    assert sorted(os.listdir(tmp_path)) == ["export"]  # no temporary directory left behind


def test_sharded_save_writes_index_that_transformers_loads(good_dir, tmp_path):
    import transformers
    model = r1jax.load_hf(good_dir)
    out = r1jax.save_hf(model, str(tmp_path / "sharded"), max_shard_bytes=60_000)
    files = sorted(os.listdir(out))
    assert st.INDEX_FILE in files
    assert sum(f.endswith(".safetensors") for f in files) > 2
    again = r1jax.load_hf(out)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    w = reloaded.model.layers[1].self_attn.q_proj.weight.detach().numpy()
    np.testing.assert_array_equal(np.asarray(again.params["layers"]["wq"][1]).reshape(64, -1).T,
                                  w)
