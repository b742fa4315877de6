"""The continuous-batching engine (`Sampler(max_slots=N)`) against transformers' generate
and the static-batch sampler: the same completions whatever the slot count."""

import numpy as np
import pytest

import r1jax
from r1jax.sampling import Sampler
from tests.hf_models import make_hf_model
from tests.sampling.test_sampler import T, hf_greedy, hf_pair, prompts_of  # noqa: F401

LENGTHS = (5, 11, 3, 8, 7, 2)


def same_rows(a, b, logp_atol=1e-5):
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.lengths, b.lengths)
    np.testing.assert_array_equal(a.finish_reason, b.finish_reason)
    np.testing.assert_array_equal(a.prompt_index, b.prompt_index)
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=logp_atol)
    np.testing.assert_allclose(a.sampling_logprobs, b.sampling_logprobs, atol=logp_atol)


def test_greedy_with_fewer_slots_than_rows_equals_transformers(hf_pair):
    hf_model, model = hf_pair
    prompts = prompts_of(LENGTHS)
    free = hf_greedy(hf_model, prompts, eos=None)
    eos = int(free[0, 3])  # row 0 stops within 4 tokens, others where the token shows up
    ref = hf_greedy(hf_model, prompts, eos=eos)
    static = Sampler(model, max_prompt_len=32, max_new_tokens=T, eos_token_ids=[eos])
    engine = Sampler(model, max_prompt_len=32, max_new_tokens=T, eos_token_ids=[eos],
                     max_slots=2)
    out = engine.generate(prompts, temperature=0.0)
    assert out.lengths[0] <= 4 and out.finish_reason[0] == 0
    assert out.lengths.min() < T <= out.lengths.max()  # early stops and full rows mixed
    for i in range(len(prompts)):
        n = out.lengths[i]
        np.testing.assert_array_equal(out.tokens[i, :n], ref[i, :n])
        stopped = eos in ref[i].tolist()
        assert n == (ref[i].tolist().index(eos) + 1 if stopped else T)
        assert out.finish_reason[i] == (0 if stopped else 1)
        assert (out.tokens[i, n:] == 0).all() and (out.logprobs[i, n:] == 0).all()
    same_rows(out, static.generate(prompts, temperature=0.0))
    # Two slots, six prompts of one row each: every prompt is prefilled once, and each
    # decode step advances at most two rows (the first token comes from the prefill).
    assert out.stats["prefills"] == len(prompts) and out.stats["slots"] == 2
    assert out.stats["slot_steps"] == out.stats["generated_tokens"] - len(prompts)
    assert out.stats["decode_steps"] >= out.stats["slot_steps"] / 2


@pytest.mark.parametrize("cache_dtype", ["float32", "bfloat16"])
def test_sampled_rows_do_not_depend_on_the_slot_count(hf_pair, cache_dtype):
    _, model = hf_pair
    prompts = prompts_of(LENGTHS, seed=2)
    make = lambda slots: Sampler(model, max_prompt_len=32, max_new_tokens=T,
                                 eos_token_ids=[7, 11, 13], max_slots=slots,
                                 cache_dtype=cache_dtype)
    kw = dict(n=3, temperature=1.0, top_p=0.95, seed=5)
    outs = {slots: make(slots).generate(prompts, **kw) for slots in (None, 2, 7)}
    assert len(set(outs[None].lengths.tolist())) > 2  # rows finish at different steps
    assert len({tuple(r) for r in outs[None].tokens[:3]}) == 3  # group members differ
    for slots in (2, 7):
        # A row's logits differ across batch shapes only by float32 round-off (~1e-6); a
        # bf16 cache can round such a difference in a key or value to one bf16 ulp (~4e-3
        # in a log-prob here), which could in principle flip a draw (README).
        same_rows(outs[None], outs[slots], 1e-5 if cache_dtype == "float32" else 2e-2)
        st = outs[slots].stats
        assert st["slot_steps"] == st["generated_tokens"] - st["rows"]
        assert st["slot_utilization"] == st["slot_steps"] / (st["decode_steps"] * slots)
        # One prefill per prompt (one prompt at a time on one device), even with fewer slots
        # than the group has rows (2 < n = 3: a group enters over several steps).
        assert st["prefills"] == len(prompts)
        # A free slot takes the next waiting row at once: until the last row has entered,
        # every decode step runs with all slots occupied.
        lengths = outs[None].lengths
        assert st["decode_steps"] >= -(-(lengths.sum() - len(lengths)) // slots)
    assert outs[2].stats["slot_utilization"] > 0.9
    assert outs[2].stats["decode_steps"] > outs[7].stats["decode_steps"]
    # A different seed changes the draws; the same seed on another slot count does not.
    other = make(7).generate(prompts, **dict(kw, seed=6))
    assert (other.tokens != outs[7].tokens).any()


def test_engine_on_an_8_device_mesh_equals_one_device(tmp_path):
    make_hf_model("qwen2", init_std=0.2, seed=4).save_pretrained(tmp_path)
    prompts = prompts_of((3, 8, 5, 12, 6))
    single = Sampler(r1jax.load_hf(str(tmp_path)), max_prompt_len=32, max_new_tokens=T,
                     eos_token_ids=[5, 9])
    mesh = r1jax.sharding.make_mesh(data=2, fsdp=2, tensor=2)
    sharded = Sampler(r1jax.load_hf(str(tmp_path), mesh=mesh), max_prompt_len=32,
                      max_new_tokens=T, eos_token_ids=[5, 9], max_slots=4)
    for kw in (dict(temperature=0.0), dict(temperature=1.0, top_p=0.9, seed=3)):
        same_rows(single.generate(prompts, n=2, **kw), sharded.generate(prompts, n=2, **kw))


def test_slot_budget_must_divide_over_the_batch_axes(hf_pair):
    _, model = hf_pair
    with pytest.raises(ValueError, match="max_slots must be a positive multiple"):
        Sampler(model, max_slots=0)
    mesh = r1jax.sharding.make_mesh(data=2, fsdp=2, tensor=2)
    sharded = type("M", (), {"config": model.config, "params": None,
                             "sharding": r1jax.sharding.Sharding(mesh)})()
    with pytest.raises(ValueError, match="multiple of the batch parallelism 4, got 6"):
        Sampler(sharded, max_slots=6)
