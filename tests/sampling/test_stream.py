"""`Sampler.stream`: prompts added over time, groups back as they finish, each completion the
same as the static-batch sampler gives for the same seed, prompt index and sample index."""

import logging

import jax
import numpy as np
import pytest

import r1jax
from r1jax.sampling import Sampler
from tests.hf_models import make_hf_model
from tests.sampling.test_engine import same_rows
from tests.sampling.test_sampler import T, hf_pair, prompts_of  # noqa: F401


@pytest.mark.parametrize("segment_steps", [1, 3, 64])
def test_stream_groups_equal_the_static_batch(hf_pair, segment_steps):
    _, model = hf_pair
    first, second = prompts_of((5, 11, 3), seed=2), prompts_of((8, 2, 7, 4), seed=3)
    kw = dict(n=3, temperature=1.0, top_p=0.95, seed=5)
    static = Sampler(model, max_prompt_len=32, max_new_tokens=T, eos_token_ids=[7, 11, 13])
    ref = static.generate(first + second, **kw)
    assert len(set(ref.lengths.tolist())) > 2  # rows finish at different steps
    engine = Sampler(model, max_prompt_len=32, max_new_tokens=T, eos_token_ids=[7, 11, 13],
                     max_slots=4)
    stream = engine.stream(segment_steps=segment_steps, **kw)
    assert not stream.dispatch() and stream.collect() == []  # nothing to run yet
    assert stream.add(first) == [0, 1, 2] and stream.waiting == 3
    got, calls = {}, 0
    while stream.dispatch():
        calls += 1
        if calls == 2:
            with pytest.raises(RuntimeError, match="collect"):
                stream.add(second)
        for prompt, out in stream.collect():
            assert prompt not in got
            got[prompt] = out
        if calls == 2:  # prompts join while others are decoding
            assert stream.add(second) == [3, 4, 5, 6]
        assert stream.in_flight >= 0 and stream.waiting >= 0
    assert sorted(got) == list(range(7)) and stream.in_flight == stream.waiting == 0
    for p, out in got.items():
        rows = slice(3 * p, 3 * p + 3)
        np.testing.assert_array_equal(out.tokens, ref.tokens[rows, :T])
        np.testing.assert_array_equal(out.lengths, ref.lengths[rows])
        np.testing.assert_array_equal(out.finish_reason, ref.finish_reason[rows])
        np.testing.assert_allclose(out.logprobs, ref.logprobs[rows], atol=1e-5)
        np.testing.assert_allclose(out.sampling_logprobs, ref.sampling_logprobs[rows],
                                   atol=1e-5)
        assert out.prompt_ids == [(first + second)[p]]
    st = stream.stats
    # Every generated token but each row's first (drawn from the prefill) is one slot-step.
    assert st["slot_steps"] == ref.lengths.sum() - len(ref.lengths)
    assert st["prefills"] == 7 and st["segments"] == calls
    if segment_steps == 1:
        assert st["decode_steps"] == calls
    assert st["decode_steps"] >= -(-st["slot_steps"] // 4)


def test_stream_needs_slots_and_one_dispatch_at_a_time(hf_pair):
    _, model = hf_pair
    with pytest.raises(ValueError, match="max_slots"):
        Sampler(model, max_prompt_len=32, max_new_tokens=T).stream(n=2)
    engine = Sampler(model, max_prompt_len=32, max_new_tokens=T, max_slots=2)
    with pytest.raises(ValueError, match="segment_steps"):
        engine.stream(segment_steps=0)
    stream = engine.stream(n=2)
    stream.add(prompts_of((4,)))
    assert stream.dispatch()
    with pytest.raises(RuntimeError, match="collect"):
        stream.dispatch()
    stream.collect()


def test_a_stream_compiles_its_segment_program_once(tmp_path, caplog):
    """On a data x fsdp x tensor mesh, segments that start from the freshly made state or from
    the last segment's state, with 9, 2 or 5 prompts waiting, all run one compiled program:
    the state leaves each segment with the avals and shardings it entered with, and the queue
    is padded to the largest size seen."""
    make_hf_model("qwen2", init_std=0.2, seed=4).save_pretrained(tmp_path)
    mesh = r1jax.sharding.make_mesh(data=2, fsdp=2, tensor=2)
    engine = Sampler(r1jax.load_hf(str(tmp_path), mesh=mesh), max_prompt_len=32,
                     max_new_tokens=T, eos_token_ids=[5, 9], max_slots=8)
    batches = [prompts_of((3, 8, 5, 12, 6, 4, 9, 2, 7), seed=1), prompts_of((5, 3), seed=2),
               prompts_of((6, 2, 8, 4, 3), seed=3)]
    kw = dict(n=2, temperature=1.0, seed=4)
    got = {}
    with jax.log_compiles(), caplog.at_level(logging.WARNING, logger="jax"):
        for start in range(2):  # a second stream of the same sampler reuses the program too
            stream = engine.stream(segment_steps=2, **kw)
            for batch in batches:
                stream.add(batch)
                while stream.waiting:
                    assert stream.dispatch()
                    got[start] = got.get(start, []) + stream.collect()
            while stream.dispatch():
                got[start] += stream.collect()
            assert len(got[start]) == 16
    compiles = [r for r in caplog.records if "Compiling jit(_engine_run)" in r.getMessage()]
    assert len(compiles) == 1
    ref = engine.generate(sum(batches, []), **kw)
    for p, out in got[1]:
        np.testing.assert_array_equal(out.tokens, ref.tokens[2 * p:2 * p + 2, :T])
