"""Sampling distributions after temperature / top-k / top-p / min-p, by counting draws."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.sampling import SamplingParams, filter_logits, sample

PROBS = np.array([0.30, 0.22, 0.16, 0.12, 0.09, 0.06, 0.04, 0.01])
DRAWS = 40_000
# chi-square critical values at p = 0.001 by degrees of freedom.
CHI2_CRIT = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32}


def expected(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0) -> np.ndarray:
    """The filtered, renormalized distribution, computed the textbook way in numpy."""
    p = PROBS ** (1.0 / temperature)
    p = p / p.sum()
    order = np.argsort(-p)
    keep = np.ones_like(p, bool)
    if top_k:
        keep[order[top_k:]] = False
        p = np.where(keep, p, 0)
        p = p / p.sum()
    if top_p < 1.0:
        mass, kept = 0.0, np.zeros_like(keep)
        for i in order:
            if mass < top_p and p[i] > 0:
                kept[i] = True
                mass += p[i]
        p = np.where(kept, p, 0)
        p = p / p.sum()
    if min_p > 0:
        p = np.where(p >= min_p * p.max(), p, 0)
        p = p / p.sum()
    return p


def draw(params: SamplingParams) -> np.ndarray:
    logits = jnp.log(jnp.asarray(PROBS, jnp.float32))[None].repeat(DRAWS, 0)
    tokens, logp, slogp = jax.jit(lambda k: sample(logits, k, params))(jax.random.key(0))
    return np.asarray(tokens), np.asarray(logp), np.asarray(slogp)


@pytest.mark.parametrize("kw", [
    dict(),
    dict(temperature=0.5),
    dict(temperature=1.7),
    dict(top_k=3),
    dict(top_p=0.7),
    dict(top_p=0.5, temperature=2.0),
    dict(min_p=0.25),
    dict(top_k=5, top_p=0.8, min_p=0.2),
])
def test_frequencies_match_filtered_distribution(kw):
    want = expected(**kw)
    tokens, logp, slogp = draw(SamplingParams(**kw))
    counts = np.bincount(tokens, minlength=len(PROBS))
    assert counts[want == 0].sum() == 0, "a filtered-out token was drawn"
    support = want > 0
    exp_counts = want[support] * DRAWS
    chi2 = ((counts[support] - exp_counts) ** 2 / exp_counts).sum()
    df = int(support.sum()) - 1
    if df:
        assert chi2 < CHI2_CRIT[df], (chi2, counts, exp_counts)
    # Log-probs: policy at temperature 1, and the distribution actually sampled from.
    np.testing.assert_allclose(logp, np.log(PROBS)[tokens], atol=1e-5)
    np.testing.assert_allclose(slogp, np.log(np.where(want > 0, want, 1.0))[tokens], atol=1e-5)


def test_top_p_hand_case():
    """Probabilities .4 .3 .15 .1 .05 with top_p = .7 keep the first two: 4/7 and 3/7."""
    logits = jnp.log(jnp.asarray([[0.4, 0.3, 0.15, 0.1, 0.05]]))
    x = filter_logits(logits, SamplingParams(top_p=0.7))
    np.testing.assert_allclose(np.asarray(jax.nn.softmax(x)), [[4 / 7, 3 / 7, 0, 0, 0]],
                               atol=1e-6)


def test_greedy_is_argmax_with_zero_sampling_logprob():
    logits = jnp.asarray([[0.1, 2.0, -1.0], [3.0, 2.9, 0.0]])
    tokens, logp, slogp = sample(logits, jax.random.key(0), SamplingParams(temperature=0))
    np.testing.assert_array_equal(np.asarray(tokens), [1, 0])
    np.testing.assert_allclose(np.asarray(logp),
                               np.asarray(jax.nn.log_softmax(logits))[[0, 1], [1, 0]],
                               atol=1e-6)
    assert (np.asarray(slogp) == 0).all()
