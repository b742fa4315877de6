"""The native sampler against transformers' generate and a teacher-forced forward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import r1jax
from r1jax.sampling import Sampler
from tests.hf_models import make_hf_model

T = 16


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def hf_pair(request, tmp_path_factory):
    hf_model = make_hf_model(request.param, init_std=0.2, seed=3)
    path = tmp_path_factory.mktemp("m")
    hf_model.save_pretrained(path)
    return hf_model, r1jax.load_hf(str(path))


def prompts_of(lengths, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 256, n).tolist() for n in lengths]


def hf_greedy(hf_model, prompts, eos):
    width = max(map(len, prompts))
    ids = np.zeros((len(prompts), width), np.int64)
    mask = np.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = p
        mask[i, width - len(p):] = 1
    with torch.no_grad():
        out = hf_model.generate(torch.tensor(ids), attention_mask=torch.tensor(mask),
                                do_sample=False, max_new_tokens=T, pad_token_id=0,
                                eos_token_id=eos)
    return out.numpy()[:, width:]


def test_greedy_equals_transformers_generate(hf_pair):
    hf_model, model = hf_pair
    prompts = prompts_of((5, 11, 3, 8))
    free = hf_greedy(hf_model, prompts, eos=None)
    assert len({tuple(r) for r in free}) == 4 and len(set(free[1].tolist())) > 3
    eos = int(free[0, 3])  # row 0 stops within 4 tokens; others where this token shows up
    first = free[0].tolist().index(eos)
    ref = hf_greedy(hf_model, prompts, eos=eos)
    sampler = Sampler(model, max_prompt_len=32, max_new_tokens=T, eos_token_ids=[eos])
    out = sampler.generate(prompts, temperature=0.0)
    assert out.lengths[0] == first + 1 <= 4 and out.finish_reason[0] == 0
    for i in range(4):
        n = out.lengths[i]
        np.testing.assert_array_equal(out.tokens[i, :n], ref[i, :n])
        stopped = eos in ref[i].tolist()
        assert out.finish_reason[i] == (0 if stopped else 1)
        assert n == (ref[i].tolist().index(eos) + 1 if stopped else T)
        assert (out.tokens[i, n:] == 0).all()


def teacher_forced_logprobs(model, prompt, completion, temperature=1.0):
    seq = jnp.asarray([prompt + completion])
    logits = np.asarray(model(seq))[0, len(prompt) - 1:-1] / temperature
    logp = np.asarray(jax.nn.log_softmax(logits, -1))
    return logp[np.arange(len(completion)), completion]


def test_logprobs_equal_teacher_forced_forward(hf_pair):
    _, model = hf_pair
    prompts = prompts_of((4, 9, 6))
    sampler = Sampler(model, max_prompt_len=32, max_new_tokens=T)
    out = sampler.generate(prompts, n=2, temperature=0.7, seed=5)
    assert (out.lengths == T).all()
    for b, comp in enumerate(out.completions()):
        prompt = prompts[out.prompt_index[b]]
        np.testing.assert_allclose(out.logprobs[b, :T],
                                   teacher_forced_logprobs(model, prompt, comp), atol=1e-5)
        np.testing.assert_allclose(out.sampling_logprobs[b, :T],
                                   teacher_forced_logprobs(model, prompt, comp, 0.7),
                                   atol=1e-5)


def test_group_sampling_is_seeded_and_varied(hf_pair):
    _, model = hf_pair
    prompts = prompts_of((4, 7))
    sampler = Sampler(model, max_prompt_len=32, max_new_tokens=T)
    a = sampler.generate(prompts, n=4, temperature=1.0, seed=0)
    b = sampler.generate(prompts, n=4, temperature=1.0, seed=0)
    c = sampler.generate(prompts, n=4, temperature=1.0, seed=1)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.logprobs, b.logprobs)
    assert (a.tokens != c.tokens).any()
    np.testing.assert_array_equal(a.prompt_index, [0, 0, 0, 0, 1, 1, 1, 1])
    assert len({tuple(r) for r in a.tokens[:4]}) == 4  # group members differ
    greedy = sampler.generate(prompts, n=3, temperature=0.0)
    for g in range(2):
        assert (greedy.tokens[3 * g:3 * g + 3] == greedy.tokens[3 * g]).all()


def test_stop_tokens_and_top_k_one(hf_pair):
    _, model = hf_pair
    prompts = prompts_of((6,))
    sampler = Sampler(model, max_prompt_len=32, max_new_tokens=T)
    greedy = sampler.generate(prompts, temperature=0.0)
    # top_k=1 sampling is greedy whatever the temperature, and its sampling logprob is 0.
    topk1 = sampler.generate(prompts, temperature=1.3, top_k=1, seed=9)
    np.testing.assert_array_equal(topk1.tokens, greedy.tokens)
    np.testing.assert_allclose(topk1.sampling_logprobs, 0.0, atol=1e-6)
    stop = int(greedy.tokens[0, 5])
    first = greedy.tokens[0].tolist().index(stop)
    stopped = sampler.generate(prompts, temperature=0.0, stop_token_ids=[stop])
    assert stopped.lengths[0] == first + 1 and stopped.finish_reason[0] == 0
    assert stopped.stats["generated_tokens"] == first + 1


def test_same_output_on_one_device_and_8_device_mesh(tmp_path):
    make_hf_model("qwen2", init_std=0.2, seed=4).save_pretrained(tmp_path)
    prompts = prompts_of((3, 8, 5, 12))
    single = Sampler(r1jax.load_hf(str(tmp_path)), max_prompt_len=32, max_new_tokens=T)
    mesh = r1jax.sharding.make_mesh(data=2, fsdp=2, tensor=2)
    sharded = Sampler(r1jax.load_hf(str(tmp_path), mesh=mesh), max_prompt_len=32,
                      max_new_tokens=T)
    for kw in (dict(temperature=0.0), dict(temperature=1.0, top_p=0.9, seed=3)):
        a = single.generate(prompts, n=2, **kw)
        b = sharded.generate(prompts, n=2, **kw)
        np.testing.assert_array_equal(a.tokens, b.tokens)
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)


def test_invalid_requests_raise_before_compiling(hf_pair):
    _, model = hf_pair
    sampler = Sampler(model, max_prompt_len=8, max_new_tokens=T)
    ok = [[1, 2, 3]]
    cases = [
        (dict(prompt_ids=[[1], []]), "prompt 1 is empty"),
        (dict(prompt_ids=[]), "at least one prompt"),
        (dict(prompt_ids=ok, temperature=-0.1), "temperature must be >= 0"),
        (dict(prompt_ids=ok, top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(prompt_ids=ok, top_p=1.5), r"top_p must be in \(0, 1\]"),
        (dict(prompt_ids=ok, top_k=-1), "top_k must be an integer >= 0"),
        (dict(prompt_ids=ok, min_p=1.0), r"min_p must be in \[0, 1\)"),
        (dict(prompt_ids=ok, n=0), "n must be an integer >= 1"),
        (dict(prompt_ids=ok, max_new_tokens=T + 1), "max_new_tokens must be in"),
        (dict(prompt_ids=[[1] * 9]), "prompt 0 has 9 tokens, more than max_prompt_len=8"),
        (dict(prompt_ids=[[1, 999]]), "token id 999 outside the vocabulary"),
    ]
    for kwargs, msg in cases:
        with pytest.raises(ValueError, match=msg):
            sampler.generate(**kwargs)
    assert sampler._compiled == {}


def test_long_prompts_left_truncated_and_counted(hf_pair):
    _, model = hf_pair
    sampler = Sampler(model, max_prompt_len=8, max_new_tokens=4, truncate_prompts=True)
    long = list(range(1, 13))
    out = sampler.generate([long, [5, 6]], temperature=0.0)
    assert out.stats["truncated_prompts"] == 1
    assert out.prompt_ids[0] == long[-8:]
    same = sampler.generate([long[-8:], [5, 6]], temperature=0.0)
    np.testing.assert_array_equal(out.tokens, same.tokens)


@pytest.mark.parametrize("via_bits", [True, False])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_cache_slot_writes_equal_numpy_assignment(dtype, via_bits):
    # Row b gets values[b] at position pos[b] of its sequence axis (2, or 3 for the
    # transposed key cache); the 16-bit path writes raw bits and must write the same.
    from r1jax.sampling.sampler import _write_slots
    rng = np.random.default_rng(0)
    cache = jnp.asarray(rng.normal(size=(5, 2, 7, 3)), dtype)
    values = jnp.asarray(rng.normal(size=(5, 2, 3)), jnp.float32)  # cast by the write
    pos = np.array([0, 6, 3, 3, 1])
    for seq_axis, c in ((2, cache), (3, jnp.swapaxes(cache, 2, 3))):
        got = _write_slots(c, jnp.asarray(pos), values, via_bits, seq_axis)
        assert got.dtype == c.dtype
        want = np.array(c, np.float32)
        cast = np.asarray(values.astype(c.dtype), np.float32)
        for b in range(5):
            if seq_axis == 2:
                want[b, :, pos[b], :] = cast[b]
            else:
                want[b, :, :, pos[b]] = cast[b]
        np.testing.assert_array_equal(np.asarray(got, np.float32), want)


def test_cache_slot_writes_stay_on_each_rows_shard():
    # On a mesh the write partitions row by row: no collective moves indices or values
    # between devices (a scatter with the rows as a plain index needs 4 per write).
    import re

    from jax.sharding import NamedSharding, PartitionSpec

    from r1jax.sampling.sampler import _write_slots
    from r1jax.sharding import make_mesh
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    spec = lambda *axes: NamedSharding(mesh, PartitionSpec(*axes))
    cache = jax.device_put(jnp.zeros((8, 2, 16, 4)), spec(("data", "fsdp"), "tensor"))
    values = jax.device_put(jnp.ones((8, 2, 4)), spec(("data", "fsdp"), "tensor"))
    pos = jax.device_put(jnp.arange(8, dtype=jnp.int32), spec(("data", "fsdp")))
    write = jax.jit(lambda c, v, p: _write_slots(c, p, v, False),
                    out_shardings=cache.sharding)
    hlo = write.lower(cache, values, pos).compile().as_text()
    assert not re.findall(r"(all-gather|all-reduce|all-to-all|collective-permute)", hlo)
    got = np.asarray(write(cache, values, pos))
    assert got.sum() == 8 * 2 * 4 and all(got[b, :, b].all() for b in range(8))


def test_bf16_cache_logprobs_close_to_teacher_forced(hf_pair):
    _, model = hf_pair
    prompts = prompts_of((4, 9))
    sampler = Sampler(model, max_prompt_len=32, max_new_tokens=T, cache_dtype="bfloat16")
    out = sampler.generate(prompts, n=2, temperature=1.0, seed=2)
    for b, comp in enumerate(out.completions()):
        prompt = prompts[out.prompt_index[b]]
        np.testing.assert_allclose(out.logprobs[b, :T],
                                   teacher_forced_logprobs(model, prompt, comp), atol=0.05)
