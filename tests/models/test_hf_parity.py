"""Logits of r1jax against Hugging Face transformers (PyTorch) with the same random weights."""

import jax.numpy as jnp
import numpy as np
import pytest
import transformers

import r1jax
from tests.hf_models import FAMILIES, hf_logits, left_padded_batch, make_hf_model

FP32_ATOL = 1e-4
# bf16 keeps 8 mantissa bits: logits of magnitude ~1 after two layers differ by a few 1e-2.
BF16_ATOL = 6e-2


@pytest.fixture(scope="module", params=FAMILIES)
def hf_dir(request, tmp_path_factory):
    model = make_hf_model(request.param)
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    return request.param, model, str(path)


def test_fp32_logits_match_transformers_on_left_padded_batch(hf_dir):
    family, hf_model, path = hf_dir
    tokens, mask, positions = left_padded_batch()
    ref = hf_logits(hf_model, tokens, mask, positions)
    model = r1jax.load_hf(path)
    assert model.config.family == family
    out = np.asarray(model(jnp.asarray(tokens), attention_mask=jnp.asarray(mask)))
    real = mask.astype(bool)
    assert np.abs(out - ref)[real].max() <= FP32_ATOL
    # Explicit positions give the same result as positions derived from the mask.
    out2 = np.asarray(model(jnp.asarray(tokens), positions=jnp.asarray(positions),
                            attention_mask=jnp.asarray(mask)))
    np.testing.assert_allclose(out2[real], out[real], atol=1e-6)


def test_padding_gives_the_unpadded_logits(hf_dir):
    _, _, path = hf_dir
    tokens, mask, _ = left_padded_batch()
    model = r1jax.load_hf(path)
    padded = np.asarray(model(jnp.asarray(tokens), attention_mask=jnp.asarray(mask)))
    for row, pad in ((1, 4), (2, 7)):
        alone = np.asarray(model(jnp.asarray(tokens[row:row + 1, pad:])))
        np.testing.assert_allclose(padded[row, pad:], alone[0], atol=2e-6)


def test_bf16_logits_within_stated_tolerance(hf_dir):
    _, hf_model, path = hf_dir
    tokens, mask, positions = left_padded_batch()
    ref = hf_logits(hf_model, tokens, mask, positions)
    model = r1jax.load_hf(path, dtype="bfloat16")
    out = np.asarray(model(jnp.asarray(tokens), attention_mask=jnp.asarray(mask)))
    err = np.abs(out - ref)[mask.astype(bool)]
    assert err.max() <= BF16_ATOL
    assert err.mean() <= BF16_ATOL / 4


def test_save_round_trip_loads_in_transformers_with_same_logits(hf_dir, tmp_path):
    family, hf_model, path = hf_dir
    tokens, mask, positions = left_padded_batch()
    ref = hf_logits(hf_model, tokens, mask, positions)
    model = r1jax.load_hf(path)
    out_dir = r1jax.save_hf(model, str(tmp_path / "export"))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out_dir).eval()
    assert type(reloaded) is type(hf_model)
    got = hf_logits(reloaded, tokens, mask, positions)
    np.testing.assert_allclose(got[mask.astype(bool)], ref[mask.astype(bool)], atol=1e-6)
    # And r1jax reads its own export back to the same parameters.
    again = r1jax.load_hf(out_dir)
    for a, b in zip(jax_leaves(model.params), jax_leaves(again.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def jax_leaves(tree):
    import jax
    return jax.tree.leaves(tree)
