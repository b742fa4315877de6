"""policy_loss, aggregate and kl_penalty against hand-computed values from the formulas."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.rl import losses

LOG = math.log


def _loss(logp, old, adv, mask, **kw):
    return losses.policy_loss(jnp.asarray(logp, jnp.float32), jnp.asarray(old, jnp.float32),
                              jnp.asarray(adv, jnp.float32), jnp.asarray(mask, jnp.float32),
                              **kw)


# One token per row; old_logp = 0, so r = exp(logp). eps_low = 0.2, eps_high = 0.28.
# columns: log r, A, expected L (no dual clip), clip side, expected L with dual clip c = 3
CASES = [
    (LOG(1.1), 2.0, -2.2, None, -2.2),           # inside the range
    (LOG(1.5), 2.0, -2.56, "high", -2.56),       # r > 1 + eps_high, A > 0: -A (1.28)
    (LOG(0.5), 2.0, -1.0, None, -1.0),           # r < 1 - eps_low, A > 0: unclipped -A r
    (LOG(0.5), -1.0, 0.8, "low", 0.8),           # r < 1 - eps_low, A < 0: -A (0.8)
    (LOG(1.5), -1.0, 1.5, None, 1.5),            # r > 1 + eps_high, A < 0: unclipped
    (LOG(5.0), -1.0, 5.0, None, 3.0),            # dual clip: min(5, -A c = 3)
    (30.0, 1.0, -1.28, "high", -1.28),           # log r clamped at 20: r = e^20, clipped
    (30.0, -1.0, math.exp(20.0), None, 3.0),     # A < 0, r = e^20: only the dual clip bounds
    (-30.0, 1.0, -math.exp(-20.0), None, -math.exp(-20.0)),  # r = e^-20, A > 0: unclipped
    (-30.0, -0.5, 0.4, "low", 0.4),              # r = e^-20, A < 0: -A (0.8)
    (LOG(3.0), 0.0, 0.0, None, 0.0),             # A = 0: zero loss, never "clipped"
]


@pytest.mark.parametrize("dual", [False, True])
def test_per_token_loss_table(dual):
    logr = [[c[0]] for c in CASES]
    adv = [c[1] for c in CASES]
    mask = np.ones((len(CASES), 1))
    for i, case in enumerate(CASES):
        expected = case[4] if dual else case[2]
        # seq-mean-token-sum over one row = that row's per-token loss
        loss, m = _loss([logr[i]], [[0.0]], [adv[i]], [[1.0]], eps_low=0.2, eps_high=0.28,
                        clip_c=3.0 if dual else None, agg="seq-mean-token-sum")
        np.testing.assert_allclose(loss, expected, rtol=1e-5, err_msg=f"case {i}: {case}")
        assert m["clip_low"] == (case[3] == "low"), case
        assert m["clip_high"] == (case[3] == "high"), case
        assert m["dual_clip"] == (dual and case[4] != case[2]), case
    _, m = _loss(logr, np.zeros_like(logr), adv, mask, eps_low=0.2, eps_high=0.28,
                 clip_c=3.0 if dual else None)
    s = losses.summarize_metrics(m)
    assert float(s["clip_frac_high"]) == pytest.approx(2 / 11)
    assert float(s["clip_frac_low"]) == pytest.approx(2 / 11)
    assert float(s["clip_frac"]) == pytest.approx(4 / 11)
    assert float(s["dual_clip_frac"]) == pytest.approx(2 / 11 if dual else 0.0)
    # approx KL = mean(old - logp) = -mean(log r)
    assert float(s["approx_kl"]) == pytest.approx(-sum(c[0] for c in CASES) / 11, rel=1e-5)


def test_gradient_is_exactly_zero_where_the_clip_is_active():
    logr = np.array([[LOG(1.5), LOG(1.1), LOG(0.5), LOG(0.5), LOG(5.0), LOG(1.5)]])
    adv = np.array([[2.0, 2.0, 2.0, -1.0, -1.0, -1.0]])
    mask = np.ones_like(logr)

    def f(logp):
        return _loss(logp, np.zeros_like(logr), adv, mask, eps_low=0.2, eps_high=0.28,
                     clip_c=3.0)[0]

    g = np.asarray(jax.grad(f)(jnp.asarray(logr, jnp.float32)))
    # unclipped: dL/dlogp = -A r / 6 (token-mean over 6 tokens); clipped (high with A > 0,
    # low with A < 0) and dual-clipped tokens: exactly 0.
    expected = [0.0, -2 * 1.1 / 6, -2 * 0.5 / 6, 0.0, 0.0, 1.5 / 6]
    np.testing.assert_allclose(g, [expected], rtol=1e-6)
    assert g[0, 0] == 0.0 and g[0, 3] == 0.0 and g[0, 4] == 0.0


# Per-token values with a fully masked third row.
VALUES = np.array([[1.0, 2.0, 3.0], [4.0, 7.0, 9.0], [5.0, 5.0, 5.0]])
MASK = np.array([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
AGG_EXPECTED = {
    "token-mean": (1 + 2 + 3 + 4) / 4,                    # 10 / 4 valid tokens
    "seq-mean-token-mean": (2.0 + 4.0) / 2,               # row means 2, 4; 2 non-empty rows
    "seq-mean-token-sum": (6.0 + 4.0) / 2,                # row sums 6, 4
    "seq-mean-token-sum-norm": 10.0 / (3 * 4),            # 3 rows x max_response_len 4
}


@pytest.mark.parametrize("agg", losses.AGG_MODES)
def test_aggregation_modes(agg):
    got = losses.aggregate(jnp.asarray(VALUES), MASK, agg, max_response_len=4)
    np.testing.assert_allclose(got, AGG_EXPECTED[agg], rtol=1e-6)
    # the same through policy_loss: r = 1 and per-token A = -value give L = value
    loss, m = _loss(np.zeros((3, 3)), np.zeros((3, 3)), -VALUES, MASK, agg=agg,
                    max_response_len=4)
    np.testing.assert_allclose(loss, AGG_EXPECTED[agg], rtol=1e-6)
    assert (float(m["tokens"]), float(m["sequences"])) == (4.0, 2.0)
    # explicit denominator: a whole batch twice as large
    d = 2 * losses.loss_denominator(MASK, agg, 4)
    loss, _ = _loss(np.zeros((3, 3)), np.zeros((3, 3)), -VALUES, MASK, agg=agg, denominator=d)
    np.testing.assert_allclose(loss, AGG_EXPECTED[agg] / 2, rtol=1e-6)


def test_token_count_overrides_token_mean_denominator():
    loss, _ = _loss(np.zeros((3, 3)), np.zeros((3, 3)), -VALUES, MASK, token_count=20.0)
    np.testing.assert_allclose(loss, 10.0 / 20.0, rtol=1e-6)


def test_masked_garbage_and_fully_masked_rows_give_finite_zero_gradients():
    logp = jnp.array([[-1.0, jnp.nan, -jnp.inf], [jnp.inf, jnp.nan, -jnp.inf]])
    old = jnp.array([[-1.5, jnp.inf, 0.0], [jnp.nan, 1.0, 2.0]])
    mask = jnp.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    def f(lp, agg, level):
        return losses.policy_loss(lp, old, jnp.array([1.0, -1.0]), mask, agg=agg,
                                  max_response_len=3, ratio_level=level, ref_logp=old,
                                  beta=0.1)[0]

    for agg in losses.AGG_MODES:
        for level in losses.RATIO_LEVELS:
            loss, g = jax.value_and_grad(f)(logp, agg, level)
            assert np.isfinite(loss) and np.all(np.isfinite(g)), (agg, level)
            assert np.all(np.asarray(g)[mask == 0] == 0.0)
            assert g[0, 0] != 0.0
    # nothing valid at all: loss 0, gradient 0
    loss, g = jax.value_and_grad(lambda lp: losses.policy_loss(
        lp, old, jnp.ones(2), jnp.zeros((2, 3)))[0])(logp)
    assert float(loss) == 0.0 and np.all(np.asarray(g) == 0.0)


def test_zero_advantage_gives_zero_loss_and_gradient():
    logp = jnp.array([[-1.0, -2.0], [-0.5, -3.0]])
    loss, g = jax.value_and_grad(lambda lp: losses.policy_loss(
        lp, logp - 0.7, jnp.zeros(2), jnp.ones((2, 2)), clip_c=3.0)[0])(logp)
    assert float(loss) == 0.0 and np.all(np.asarray(g) == 0.0)


def test_adv_per_token_and_broadcast_agree():
    logp = jnp.array([[-1.0, -2.0, -0.1], [-0.5, -3.0, -1.0]])
    old = logp + jnp.array([[0.1, -0.3, 0.05], [0.2, 0.0, -0.1]])
    mask = jnp.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    adv = jnp.array([0.7, -1.3])
    a, _ = losses.policy_loss(logp, old, adv, mask)
    b, _ = losses.policy_loss(logp, old, jnp.broadcast_to(adv[:, None], (2, 3)), mask)
    assert float(a) == float(b)


def test_kl_estimators():
    logp = jnp.array([-1.0, -2.0, -1.0, -31.0])
    ref = jnp.array([-2.0, -1.0, -31.0, -1.0])
    np.testing.assert_allclose(losses.kl_penalty(logp, ref, "k1"), [1.0, -1.0, 30.0, -30.0])
    np.testing.assert_allclose(losses.kl_penalty(logp, ref, "k2"), [0.5, 0.5, 450.0, 450.0])
    # k3, d = ref - logp: exp(-1) + 1 - 1 = 0.3678794; exp(1) - 2 = 0.7182818;
    # d = -30 -> -20: exp(-20) + 19 -> clamped 10; d = 30 -> 20: exp(20) - 21 -> clamped 10.
    np.testing.assert_allclose(losses.kl_penalty(logp, ref, "k3"),
                               [0.3678794, 0.7182818, 10.0, 10.0], rtol=1e-6)
    with pytest.raises(ValueError, match="unknown KL estimator"):
        losses.kl_penalty(logp, ref, "k4")


def test_kl_and_entropy_terms_in_the_loss():
    logp = jnp.array([[-1.0, -2.0]])
    ref = jnp.array([[-2.0, -1.0]])
    ent = jnp.array([[0.5, 1.5]])
    mask = jnp.ones((1, 2))
    # r = 1, A = 1: pg = -1 per token; k3 mean (0.3678794 + 0.7182818) / 2 = 0.5430806;
    # entropy mean 1.
    loss, m = losses.policy_loss(logp, logp, jnp.ones(1), mask, ref_logp=ref, beta=0.1,
                                 entropy=ent, entropy_coef=0.01)
    np.testing.assert_allclose(loss, -1.0 + 0.1 * 0.5430806 - 0.01 * 1.0, rtol=1e-6)
    s = losses.summarize_metrics(m)
    np.testing.assert_allclose(s["kl"], 0.5430806, rtol=1e-6)
    np.testing.assert_allclose(s["entropy"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(s["kl_loss"], 0.05430806, rtol=1e-6)


def test_gspo_sequence_ratio():
    # row 0: log s = (log 2 + 0) / 2 -> s = sqrt(2) = 1.4142136 on both tokens;
    # row 1: the masked token is left out of the mean: s = 2.
    old = jnp.zeros((2, 2))
    logp = jnp.array([[LOG(2.0), 0.0], [LOG(2.0), 5.0]])
    mask = jnp.array([[1.0, 1.0], [1.0, 0.0]])
    s2 = math.sqrt(2.0)

    def f(lp, adv):
        return losses.policy_loss(lp, old, adv, mask, eps_low=0.2, eps_high=0.2,
                                  agg="seq-mean-token-mean", ratio_level="sequence")

    # A = -1: no clip (pg1 = r > pg2 = 1.2): L = s per token; row means sqrt2, 2.
    (loss, m), g = jax.value_and_grad(f, has_aux=True)(logp, jnp.array([-1.0, -1.0]))
    np.testing.assert_allclose(loss, (s2 + 2.0) / 2, rtol=1e-6)
    np.testing.assert_allclose(m["ratio"], 2 * s2 + 2.0, rtol=1e-6)
    # dL/dlogp[b, t] = -A s_b x (1 / n_b) x (1 / 2 rows)
    np.testing.assert_allclose(g, [[s2 / 4, s2 / 4], [2.0 / 2, 0.0]], rtol=1e-6)
    # A = +1: both rows clipped at 1.2: L = -1.2, gradient exactly 0
    (loss, m), g = jax.value_and_grad(f, has_aux=True)(logp, jnp.array([1.0, 1.0]))
    np.testing.assert_allclose(loss, -1.2, rtol=1e-6)
    assert np.all(np.asarray(g) == 0.0) and float(m["clip_high"]) == 3.0


def test_bad_arguments_raise():
    x = jnp.zeros((2, 3))
    m = jnp.ones((2, 3))
    a = jnp.zeros(2)
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        losses.policy_loss(x, x, a, m, agg="mean")
    with pytest.raises(ValueError, match="eps_low"):
        losses.policy_loss(x, x, a, m, eps_low=1.0)
    with pytest.raises(ValueError, match="eps_high"):
        losses.policy_loss(x, x, a, m, eps_high=-0.1)
    with pytest.raises(ValueError, match="c > 1"):
        losses.policy_loss(x, x, a, m, clip_c=1.0)
    with pytest.raises(ValueError, match="max_response_len"):
        losses.policy_loss(x, x, a, m, agg="seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="token_count is the denominator"):
        losses.policy_loss(x, x, a, m, agg="seq-mean-token-mean", token_count=4.0)
    with pytest.raises(ValueError, match="adv must be"):
        losses.policy_loss(x, x, jnp.zeros(3), m)
    with pytest.raises(ValueError, match="old_logp has shape"):
        losses.policy_loss(x, jnp.zeros((2, 2)), a, m)
    with pytest.raises(ValueError, match="needs ref_logp"):
        losses.policy_loss(x, x, a, m, beta=0.1)
    with pytest.raises(ValueError, match="ratio_level"):
        losses.policy_loss(x, x, a, m, ratio_level="group")
