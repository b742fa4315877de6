"""The model's attention switch: what "auto" resolves to on each backend, and every concrete
path (XLA; the Pallas TPU and GPU kernels, interpreted on CPU) against PyTorch, never against
each other: transformers' Qwen2 with the same random weights for the model's logits and
gradients, torch's scaled_dot_product_attention for the attention calls themselves (inside
shard_map under a mesh, and decode against a ragged KV cache)."""

from __future__ import annotations

import contextlib
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import r1jax
from r1jax.models import attention as attn
from r1jax.models.decoder import Decoder, forward
from r1jax.sharding import Sharding, make_mesh
from tests.hf_models import hf_logits, left_padded_batch, make_hf_model
from tests.kernels.parity import (normal, packed_segments, torch_attention, torch_attention_np,
                                  torch_decode)

FP32_ATOL = 1e-4  # logits of transformers vs r1jax in float32 (as levanter)
GRAD_RTOL = 1e-4  # gradient error relative to the largest |gradient| of that tensor
# (impl, interpret platform): every concrete path the model can take on a CPU host.
PATHS = {"xla": ("xla", None), "pallas_tpu": ("pallas", "tpu"), "pallas_gpu": ("pallas", "gpu")}


def on_platform(name: str, devices: int = 1):
    """A stand-in Sharding whose mesh devices report platform `name` (resolve reads only
    the mesh's first device platform and size)."""
    devs = np.array([types.SimpleNamespace(platform=name)] * devices, dtype=object)
    return types.SimpleNamespace(mesh=types.SimpleNamespace(devices=devs, size=devices))


def interpreted(platform):
    return attn.interpret(platform) if platform else contextlib.nullcontext()


# --------------------------------------------------------------------------------------------
# (a) Resolution: a pure function of the backend's platform name and the interpret context.


@pytest.mark.parametrize("platform, auto", [("cpu", "xla"), ("tpu", "pallas"),
                                            ("gpu", "pallas"), ("METAL", "xla")])
def test_auto_resolves_by_platform(platform, auto):
    s = on_platform(platform)
    assert attn.resolve("auto", s) == (auto, platform, False)
    assert attn.resolve("xla", s) == ("xla", platform, False)
    assert attn.transposed_key_cache("auto", s) is (auto == "xla")
    if platform in ("tpu", "gpu"):
        assert attn.resolve("pallas", s) == ("pallas", platform, False)
    else:
        with pytest.raises(ValueError, match=f"not for the '{platform}' backend"):
            attn.resolve("pallas", s)
    if platform == "gpu":
        assert attn.resolve("cudnn", s) == ("cudnn", "gpu", False)
    else:
        with pytest.raises(ValueError, match=f"'cudnn' needs a GPU backend, got '{platform}'"):
            attn.resolve("cudnn", s)


def test_interpret_context_overrides_the_backend():
    # Without a sharding the backend is JAX's default: this test host is a CPU.
    assert attn.resolve("auto") == ("xla", "cpu", False)
    for platform in ("tpu", "gpu"):
        with attn.interpret(platform):
            assert attn.resolve("auto") == ("pallas", platform, True)
            assert attn.resolve("auto", on_platform("cpu")) == ("pallas", platform, True)
            assert attn.resolve("xla") == ("xla", platform, True)
            assert not attn.transposed_key_cache("auto")
            with pytest.raises(ValueError, match="'cudnn' needs a GPU backend.*interpreted"):
                attn.resolve("cudnn")
    assert attn.resolve("auto") == ("xla", "cpu", False)  # the context was left
    with pytest.raises(ValueError, match="interpret platform 'cpu'"):
        with attn.interpret("cpu"):
            pass
    with pytest.raises(ValueError, match="impl 'flash' is not available"):
        attn.resolve("flash")
    mesh = Sharding(make_mesh(data=2, fsdp=4, tensor=1))
    with attn.interpret("tpu"), pytest.raises(ValueError, match="multi-device mesh"):
        attn.resolve("pallas", mesh)


def test_the_resolved_impl_is_the_one_traced():
    """"auto" on this CPU traces no kernel; under interpret it traces a pallas_call."""
    keys = jax.random.split(jax.random.key(3), 3)
    q = normal(keys[0], (1, 8, 2, 16), "float32")
    k, v = (normal(x, (1, 8, 1, 16), "float32") for x in keys[1:])
    seg = jnp.ones((1, 8), jnp.int32)

    def jaxpr(impl):
        return str(jax.make_jaxpr(
            lambda q, k, v: attn.attention(q, k, v, seg, sm_scale=0.3, impl=impl))(q, k, v))

    assert "pallas_call" not in jaxpr("auto")
    for platform in ("tpu", "gpu"):
        with attn.interpret(platform):
            assert "pallas_call" in jaxpr("auto")
            assert "pallas_call" not in jaxpr("xla")
    with pytest.raises(ValueError, match="'pallas' has kernels for .* not for the 'cpu'"):
        attn.attention(q, k, v, seg, sm_scale=0.3, impl="pallas")
    with pytest.raises(ValueError, match="'cudnn' needs a GPU backend, got 'cpu'"):
        attn.attention(q, k, v, seg, sm_scale=0.3, impl="cudnn")


# --------------------------------------------------------------------------------------------
# (b) The model on each path against transformers with the same random weights.


@pytest.fixture(scope="module")
def hf_qwen2(tmp_path_factory):
    model = make_hf_model("qwen2", seed=4)
    path = tmp_path_factory.mktemp("qwen2_switch")
    model.save_pretrained(path)
    return model, str(path)


def documents(seg_row: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each maximal run of one non-zero segment id."""
    runs, start = [], 0
    for i in range(1, len(seg_row) + 1):
        if i == len(seg_row) or seg_row[i] != seg_row[start]:
            if seg_row[start] != 0:
                runs.append((start, i))
            start = i
    return runs


@pytest.mark.parametrize("path", PATHS)
def test_left_padded_logits_match_transformers(hf_qwen2, path):
    hf_model, model_dir = hf_qwen2
    impl, platform = PATHS[path]
    tokens, mask, positions = left_padded_batch()
    ref = hf_logits(hf_model, tokens, mask, positions)
    model = r1jax.load_hf(model_dir, attention_impl=impl)
    with interpreted(platform):
        out = np.asarray(model(jnp.asarray(tokens), attention_mask=jnp.asarray(mask)))
    real = mask.astype(bool)
    assert np.abs(out - ref)[real].max() <= FP32_ATOL


@pytest.mark.parametrize("path", PATHS)
def test_packed_logits_and_gradients_match_transformers(hf_qwen2, path, tmp_path):
    """Packed rows (left padding, three documents / one document): each document's logits
    are transformers' on that document alone; the gradients of a weighted sum of the logits
    are torch autograd's, tensor by tensor (ours exported through save_hf's name map)."""
    hf_model, model_dir = hf_qwen2
    impl, platform = PATHS[path]
    b, s = 2, 20
    rng = np.random.default_rng(5)
    tokens = rng.integers(0, 256, (b, s))
    seg = np.asarray(packed_segments(b, s))
    weight = rng.normal(size=(b, s, 256)).astype(np.float32) * (seg != 0)[..., None]

    hf_model.zero_grad()
    ref = np.zeros((b, s, 256), np.float32)
    total = 0.0
    for row in range(b):
        for start, end in documents(seg[row]):
            logits = hf_model(torch.tensor(tokens[row:row + 1, start:end])).logits[0]
            total = total + (logits * torch.tensor(weight[row, start:end])).sum()
            ref[row, start:end] = logits.detach().numpy()
    total.backward()
    ref_grads = {n: p.grad.numpy() for n, p in hf_model.named_parameters()}

    model = r1jax.load_hf(model_dir, attention_impl=impl)
    cfg = model.config

    def loss(params):
        logits = forward(params, jnp.asarray(tokens), cfg, segment_ids=jnp.asarray(seg))
        return jnp.sum(logits * weight), logits

    with interpreted(platform):
        (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(model.params)
    real = seg != 0
    assert np.abs(np.asarray(logits) - ref)[real].max() <= FP32_ATOL

    from safetensors.numpy import load_file
    out = r1jax.save_hf(Decoder(cfg, params=grads), str(tmp_path / "grads"), dtype="float32")
    ours = load_file(f"{out}/model.safetensors")
    assert set(ours) == set(ref_grads)
    for name, ref_g in ref_grads.items():
        scale = max(float(np.abs(ref_g).max()), 1e-3)
        err = float(np.abs(ours[name] - ref_g).max())
        assert err <= GRAD_RTOL * scale, f"{name}: {err:.3g} > {GRAD_RTOL} x {scale:.3g}"


# --------------------------------------------------------------------------------------------
# (c) The attention calls against torch's scaled_dot_product_attention.


def assert_close_to(actual, expected, rtol, what):
    actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    scale = max(float(np.abs(expected).max()), 1e-6)
    err = float(np.abs(actual - expected).max())
    assert err <= rtol * scale, f"{what}: max abs error {err:.3g} > {rtol} x {scale:.3g}"


def test_kernels_in_shard_map_under_a_mesh_match_torch():
    sharding = Sharding(make_mesh(data=2, fsdp=2, tensor=2))
    b, s, h, kh, d = 4, 24, 4, 2, 16
    keys = jax.random.split(jax.random.key(2), 3)
    q = normal(keys[0], (b, s, h, d), "float32")
    k, v = (normal(x, (b, s, kh, d), "float32") for x in keys[1:])
    seg = packed_segments(b, s)
    w = np.random.default_rng(0).normal(size=(b, s, h, d)).astype(np.float32)

    tq, tk, tv = (torch.tensor(np.asarray(x), requires_grad=True) for x in (q, k, v))
    ref = torch_attention(tq, tk, tv, seg, 0.25)  # transposes keep the autograd graph
    (ref * torch.tensor(w)).sum().backward()

    def loss(q, k, v):
        o = attn.attention(q, k, v, seg, sm_scale=0.25, impl="pallas", sharding=sharding)
        return jnp.sum(o * w), o

    with attn.interpret("gpu"):
        fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
        assert "shard_map" in str(jax.make_jaxpr(fn)(q, k, v))
        (_, out), grads = fn(q, k, v)
    assert_close_to(out, ref.detach().numpy(), 2e-5, "output")
    for name, g, t in zip(("dq", "dk", "dv"), grads, (tq, tk, tv)):
        assert_close_to(g, t.grad.numpy(), 2e-5, name)


@pytest.mark.parametrize("path", PATHS)
def test_attention_of_each_path_matches_torch(path):
    impl, platform = PATHS[path]
    keys = jax.random.split(jax.random.key(6), 3)
    q = normal(keys[0], (2, 20, 4, 16), "float32")
    k, v = (normal(x, (2, 20, 2, 16), "float32") for x in keys[1:])
    seg = packed_segments(2, 20)
    with interpreted(platform):
        out = attn.attention(q, k, v, seg, sm_scale=0.3, impl=impl)
    assert_close_to(out, torch_attention_np(q, k, v, seg, 0.3), 2e-5, "output")


@pytest.mark.parametrize("path", PATHS)
def test_decode_of_each_path_matches_torch(path):
    impl, platform = PATHS[path]
    b, h, kh, s, d = 4, 4, 2, 24, 16
    keys = jax.random.split(jax.random.key(7), 3)
    q = normal(keys[0], (b, h, d), "float32")
    kc, vc = (normal(x, (b, kh, s, d), "float32") for x in keys[1:])
    lengths = jnp.array([0, 1, s, 9], jnp.int32)
    ref = torch_decode(q, kc, vc, lengths, 0.3)
    with interpreted(platform):
        out = attn.decode_attention(q, kc, vc, lengths, sm_scale=0.3, impl=impl)
        if attn.transposed_key_cache(impl):
            transposed = attn.decode_attention(q, jnp.swapaxes(kc, 2, 3), vc, lengths,
                                               sm_scale=0.3, impl=impl, keys_transposed=True)
            assert_close_to(transposed, ref, 2e-5, "decode output, keys [B, K, Dh, S]")
        else:
            with pytest.raises(ValueError, match="takes keys \\[B, K, S, Dh\\]"):
                attn.decode_attention(q, kc, vc, lengths, sm_scale=0.3, impl=impl,
                                      keys_transposed=True)
    assert_close_to(out, ref, 2e-5, "decode output")
    assert np.all(np.asarray(out)[0] == 0.0)  # an empty cache attends to nothing


def test_decode_kernel_in_shard_map_computes_in_the_cache_dtype():
    sharding = Sharding(make_mesh(data=2, fsdp=2, tensor=2))
    b, h, kh, s, d = 4, 4, 2, 24, 16
    keys = jax.random.split(jax.random.key(8), 3)
    q = normal(keys[0], (b, h, d), "float32")
    caches = [normal(x, (b, kh, s, d), "bfloat16") for x in keys[1:]]
    lengths = jnp.array([0, 1, s, 9], jnp.int32)
    with attn.interpret("gpu"):
        out = attn.decode_attention(q, *caches, lengths, sm_scale=0.25, impl="pallas",
                                    sharding=sharding)
    assert out.dtype == jnp.float32
    # The kernel casts q to the cache dtype (bf16) and returns q's dtype.
    ref = torch_decode(q.astype(jnp.bfloat16), *caches, lengths, 0.25)
    assert_close_to(out, ref, 1e-2, "decode output")
