"""Budget forcing (`BudgetForcing`, s1-style) in the native sampler and `r1jax-eval`.

Most checks run a scripted model: a real r1jax Decoder whose weights make the next token a
fixed function of the current one (a bigram table, `NEXT`), so every completion is known and
the expected token lists below are written by hand. They must come out the same from the
static batch and the continuous-batching engine (fewer slots than rows), on one device and
on a mesh of the 8 simulated CPU devices. On a random model: `budget_forcing=None` changes
nothing, sampled forced rows do not depend on the slot count, and forced tokens carry the
policy's log-probability.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import r1jax
from r1jax.config import ModelConfig
from r1jax.evaluation.cli import main
from r1jax.models import Decoder, save_hf
from r1jax.models.char_tokenizer import make_char_tokenizer
from r1jax.models.decoder import init_params, param_shardings
from r1jax.sampling import BudgetForcing, Sampler
from r1jax.sharding import Sharding, make_mesh, single_device

T = 16  # max new tokens
V = 32  # the scripted model's vocabulary (= its hidden size)
(PAD, EOS, S_A, A1, A2, END, ANS, WAIT, S_B, B1, B2, B3, E1, E2, W1, W2, S_C, C1, S_D, D1,
 FILL) = range(21)
# The script: A thinks two tokens and ends its thinking (END) early; B thinks for ever; C
# thinks one token, then the first token of a two-token delimiter (E1, E2); D stops while
# thinking. END and E2 lead to the answer ANS, then EOS. Every other token is followed by EOS.
NEXT = {S_A: A1, A1: A2, A2: END, END: ANS, ANS: EOS, WAIT: A1,
        S_B: B1, B1: B2, B2: B3, B3: B1,
        S_C: C1, C1: E1, E1: C1, E2: ANS, W1: B1, W2: C1,
        S_D: D1, D1: EOS}
SCALE = 10.0  # lm_head entry; the successor's logit is SCALE * sqrt(V) (RMSNorm of a one-hot)
LOGIT = SCALE * math.sqrt(V)

# name -> (budget forcing, {prompt's last token: expected completion}, {... : waits used}).
CASES = {
    # Case 1: the model wants to stop early; two waits, then it may end its thinking.
    "waits": (BudgetForcing(budget=64, end_ids=(END,), wait_ids=(WAIT,), max_waits=2),
              {S_A: [A1, A2, WAIT, A1, A2, WAIT, A1, A2, END, ANS, EOS],
               S_B: [B1, B2, B3] * 5 + [B1],  # never ends thinking; the budget is beyond T
               S_D: [D1, EOS]},  # a stop token while thinking ends the row
              {S_A: 2, S_B: 0, S_D: 0}),
    # Case 2: the model never ends its thinking: 7 thinking tokens, END at position 7.
    "budget": (BudgetForcing(budget=7, end_ids=(END,)),
               {S_B: [B1, B2, B3, B1, B2, B3, B1, END, ANS, EOS],
                S_A: [A1, A2, END, ANS, EOS],  # ends by itself, no waits: untouched
                S_D: [D1, EOS]},
               {S_B: 0, S_A: 0, S_D: 0}),
    # Case 3: a two-token delimiter forced at the budget (B); a two-token wait string
    # replacing an early E1, then E1 accepted and E2 forced after it (C).
    "multi_token": (BudgetForcing(budget=6, end_ids=(E1, E2), wait_ids=(W1, W2), max_waits=1),
                    {S_B: [B1, B2, B3, B1, B2, B3, E1, E2, ANS, EOS],
                     S_C: [C1, W1, W2, C1, E1, E2, ANS, EOS],
                     S_D: [D1, EOS]},
                    {S_B: 0, S_C: 1, S_D: 0}),
    # The budget ends a wait string being forced: E1 E2 at position 2, W2 never written.
    "budget_cuts_wait": (BudgetForcing(budget=2, end_ids=(E1, E2), wait_ids=(W1, W2),
                                       max_waits=1),
                         {S_C: [C1, W1, E1, E2, ANS, EOS],
                          S_B: [B1, B2, E1, E2, ANS, EOS],
                          S_D: [D1, EOS]},
                         {S_C: 1, S_B: 0, S_D: 0}),
}


def bigram_params(successor):
    """Config and parameters of a one-layer Llama (hidden size = vocabulary V) whose next
    token is successor[current token]. The residual stream stays the one-hot embedding of
    the current token (attention and MLP outputs zeroed), so the logits are SCALE * sqrt(V)
    on the successor and 0 elsewhere: greedy and temperature-1 sampling (the runner-up has
    probability ~V e^-57) both follow the table."""
    cfg = ModelConfig(family="llama", vocab_size=V, hidden_size=V, intermediate_size=64,
                      num_layers=1, num_heads=4, num_kv_heads=2, head_dim=8)
    params = jax.tree.map(np.array, init_params(cfg, jax.random.key(0)))
    params["embed"] = np.eye(V, dtype=np.float32)
    params["layers"]["wo"][:] = 0.0
    params["layers"]["w_down"][:] = 0.0
    params["final_norm"][:] = 1.0
    params["lm_head"] = np.zeros((V, V), np.float32)
    params["lm_head"][np.arange(V), successor] = SCALE
    return cfg, params


def scripted_model(sharding):
    """The NEXT script as a Decoder placed on `sharding`."""
    cfg, params = bigram_params([NEXT.get(x, EOS) for x in range(V)])
    params = jax.device_put(params, param_shardings(cfg, sharding))
    return Decoder(cfg, params=params, sharding=sharding)


@pytest.fixture(scope="module")
def scripted():
    """get(where, slots): a Sampler of the scripted model on "one" device or the 8-device
    "mesh", shared by the tests (so are its compiled programs)."""
    cache = {}

    def get(where, slots=None):
        if where not in cache:
            cache[where] = scripted_model(single_device() if where == "one" else
                                          Sharding(make_mesh(data=2, fsdp=2, tensor=2)))
        if (where, slots) not in cache:
            cache[where, slots] = Sampler(cache[where], max_prompt_len=8, max_new_tokens=T,
                                          eos_token_ids=[EOS], max_slots=slots)
        return cache[where, slots]
    return get


def script_logprobs(prompt_last, completion):
    """Policy log-probabilities of a completion under the script: ~0 for the scripted
    successor, ~-LOGIT for any other (forced) token."""
    prev = [prompt_last] + completion[:-1]
    return np.array([0.0 if tok == NEXT.get(p, EOS) else -LOGIT
                     for p, tok in zip(prev, completion)])


def test_the_scripted_model_follows_its_script(scripted):
    sampler = scripted("one")
    one = sampler.generate([[FILL, x] for x in range(V)], max_new_tokens=1, temperature=0.0)
    assert one.tokens[:, 0].tolist() == [NEXT.get(x, EOS) for x in range(V)]
    out = sampler.generate([[FILL, S_A], [S_B], [S_C], [S_D]], temperature=1.0, seed=1)
    assert out.completions() == [[A1, A2, END, ANS, EOS], [B1, B2, B3] * 5 + [B1],
                                 [C1, E1] * 8, [D1, EOS]]
    assert (out.logprobs > -1e-4).all() and "waits" not in out.stats


def check_case(out, starts, expected, waits, n):
    """`out` (rows prompt * n + sample) against a CASES entry."""
    for b, comp in enumerate(out.completions()):
        start = starts[b // n]
        assert comp == expected[start], (start, comp)
        assert out.finish_reason[b] == (0 if comp[-1] == EOS else 1)
        assert out.stats["waits"][b] == waits[start]
        # Forced tokens carry the policy's log-probability (-LOGIT where the script says
        # otherwise) and a sampling log-probability of 0.
        np.testing.assert_allclose(out.logprobs[b, :len(comp)],
                                   script_logprobs(start, comp), atol=0.05)
        assert (out.sampling_logprobs[b, :len(comp)] > -1e-4).all()
        assert (out.tokens[b, len(comp):] == PAD).all()
        assert (out.logprobs[b, len(comp):] == 0).all()


@pytest.mark.parametrize("where,slots,cases", [
    ("one", None, tuple(CASES)), ("one", 2, ("waits", "budget", "multi_token")),
    ("mesh", None, ("multi_token",)), ("mesh", 4, ("multi_token",))])
def test_hand_written_completions_on_every_path(scripted, where, slots, cases):
    """3 prompts x n=2 = 6 rows: with 2 (one device) or 4 (mesh) slots rows recycle slots,
    and each slot's forcing state starts afresh for the row that enters it."""
    sampler = scripted(where, slots)
    for name in cases:
        bf, expected, waits = CASES[name]
        starts = list(expected)
        out = sampler.generate([[FILL, s] for s in starts], n=2, temperature=1.0, seed=3,
                               budget_forcing=bf)
        check_case(out, starts, expected, waits, 2)
        assert out.stats["generated_tokens"] == 2 * sum(len(c) for c in expected.values())
        if name == "budget":
            b = 2 * starts.index(S_B)
            assert out.tokens[b].tolist().index(END) == bf.budget  # END exactly at 7


def test_stream_forces_the_same_tokens(scripted):
    bf, expected, waits = CASES["multi_token"]
    starts = list(expected)
    stream = scripted("one", 2).stream(n=2, temperature=1.0, seed=3, segment_steps=3,
                                       budget_forcing=bf)
    stream.add([[FILL, s] for s in starts])
    got = {}
    while stream.dispatch():
        got.update(stream.collect())
    assert sorted(got) == [0, 1, 2]
    for p, out in got.items():
        check_case(out, [starts[p]], {starts[p]: expected[starts[p]]}, waits, 2)


# ----------------------------------------------------------------------------------------
# A random model.

RV = 64


@pytest.fixture(scope="module")
def random_model():
    """get(slots, eos): a Sampler of a random model (weights 5x the default init, so that
    its distributions are neither flat nor one-hot); get() the model."""
    cfg = ModelConfig(family="llama", vocab_size=RV, hidden_size=32, intermediate_size=64,
                      num_layers=1, num_heads=4, num_kv_heads=2, head_dim=8)
    params = jax.tree.map(lambda a: a * 5.0, init_params(cfg, jax.random.key(5)))
    model = Decoder(cfg, params=params, sharding=single_device())
    cache = {}

    def get(*key):
        if not key:
            return model
        if key not in cache:
            cache[key] = Sampler(model, max_prompt_len=8, max_new_tokens=12,
                                 eos_token_ids=key[1], max_slots=key[0])
        return cache[key]
    return get


def random_prompts(rows=3, length=6, seed=0):
    return np.random.default_rng(seed).integers(1, RV, (rows, length)).tolist()


def same(a, b, logp_atol=0.0):
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.lengths, b.lengths)
    np.testing.assert_array_equal(a.finish_reason, b.finish_reason)
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=logp_atol)
    np.testing.assert_allclose(a.sampling_logprobs, b.sampling_logprobs, atol=logp_atol)


@pytest.mark.parametrize("slots", [None, 2])
def test_none_leaves_outputs_and_programs_unchanged(random_model, slots):
    sampler = random_model(slots, (12, 37))
    prompts = random_prompts()
    runs = (dict(temperature=0.0), dict(temperature=1.0, seed=4))
    for kw in runs if slots is None else runs[1:]:
        plain = sampler.generate(prompts, n=2, **kw)
        programs = len(sampler._compiled)
        same(plain, sampler.generate(prompts, n=2, budget_forcing=None, **kw))
        assert len(sampler._compiled) == programs  # the same compiled programs ran
        assert "waits" not in plain.stats
    assert len(set(plain.lengths.tolist())) > 1 and len({tuple(r) for r in plain.tokens}) > 2
    # A forcing that can never act (budget beyond the completion, one-token delimiter, no
    # waits) runs the forcing program and gives the same rows.
    noop = BudgetForcing(budget=12, end_ids=(int(plain.tokens[0, 1]),))
    same(plain, sampler.generate(prompts, n=2, budget_forcing=noop, temperature=1.0, seed=4),
         1e-6)


def test_forced_sampled_rows_ignore_the_slot_count_and_carry_policy_logprobs(random_model):
    prompts, n, max_new, temp = random_prompts(), 4, 12, 0.8
    kw = dict(n=n, temperature=temp, seed=7)
    static, engine = random_model(None, ()), random_model(2, ())
    free = static.generate(prompts, **kw)
    # A delimiter the model samples early in some row (so a wait is used there); the rows
    # agree with `free` up to their first forced token.
    e1 = int(np.bincount(free.tokens[:, :5].ravel()).argmax())
    e2, wait = (e1 + 1) % RV, (e1 + 2) % RV
    bf = BudgetForcing(budget=5, end_ids=(e1, e2), wait_ids=(wait,), max_waits=1)
    out = static.generate(prompts, budget_forcing=bf, **kw)
    other = engine.generate(prompts, budget_forcing=bf, **kw)
    same(out, other, 1e-5)
    np.testing.assert_array_equal(out.stats["waits"], other.stats["waits"])
    assert out.stats["waits"].max() == 1 and (out.lengths == max_new).all()
    # Teacher-forced log-probabilities of prompt + completion (one batch, equal lengths).
    seqs = jnp.asarray([prompts[b // n] + row for b, row in enumerate(out.tokens.tolist())])
    logits = np.asarray(random_model()(seqs))[:, len(prompts[0]) - 1:-1]
    policy = np.asarray(jax.nn.log_softmax(logits, -1))
    tempered = np.asarray(jax.nn.log_softmax(logits / temp, -1))
    pick = lambda lp: np.take_along_axis(lp, out.tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(out.logprobs, pick(policy), atol=1e-4)  # forced ones too
    tempered = pick(tempered)
    for b, row in enumerate(out.tokens.tolist()):
        first = row.index(e1)  # the end delimiter starts at or before the budget
        assert first <= bf.budget and row[first + 1] == e2
        if out.stats["waits"][b]:
            assert wait in row[:first]
        forced = [first + 1] + ([first] if first == bf.budget else [])
        assert (out.sampling_logprobs[b, forced] == 0).all()
        assert (tempered[b, forced] < -1e-3).all()  # 0 is not what sampling would say
        sampled = [i for i in range(max_new) if i not in forced and row[i] != wait
                   and (i < first or i > first + 1)]
        np.testing.assert_allclose(out.sampling_logprobs[b, sampled], tempered[b, sampled],
                                   atol=1e-4)
    # Up to its first forced token a row is the unforced one.
    for b, row in enumerate(out.tokens.tolist()):
        cut = min(free.tokens[b].tolist().index(e1) if e1 in free.tokens[b] else max_new,
                  bf.budget)
        assert row[:cut] == free.tokens[b, :cut].tolist()


# ----------------------------------------------------------------------------------------
# Validation.


def test_bad_settings_are_clear_errors(scripted):
    for kwargs, field in ((dict(budget=0, end_ids=(1,)), "budget"),
                          (dict(budget=True, end_ids=(1,)), "budget"),
                          (dict(budget=4, end_ids=()), "end_ids"),
                          (dict(budget=4, end_ids=(-1,)), "end_ids"),
                          (dict(budget=4, end_ids="</think>"), "end_ids"),
                          (dict(budget=4, end_ids=(1,), max_waits=-1), "max_waits"),
                          (dict(budget=4, end_ids=(1,), max_waits=2), "wait_ids")):
        with pytest.raises(ValueError, match=f"BudgetForcing.{field} "):
            BudgetForcing(**kwargs)
    bf = BudgetForcing(budget=4, end_ids=[5, np.int64(6)], wait_ids=[7], max_waits=1)
    assert bf.end_ids == (5, 6) and bf.wait_ids == (7,) and hash(bf) == hash(
        BudgetForcing(4, (5, 6), (7,), 1))
    assert r1jax.BudgetForcing is BudgetForcing
    sampler = scripted("one", 2)
    programs = len(sampler._compiled)
    with pytest.raises(ValueError, match=r"wait_ids has token id 32 outside the vocabulary"):
        sampler.generate([[S_A]], budget_forcing=BudgetForcing(4, (END,), (V,), 1))
    with pytest.raises(ValueError, match="budget_forcing must be a BudgetForcing"):
        sampler.generate([[S_A]], budget_forcing={"budget": 4})
    with pytest.raises(ValueError, match=r"end_ids has token id 40 outside"):
        sampler.stream(budget_forcing=BudgetForcing(4, (40,)))
    assert len(sampler._compiled) == programs  # all refused before anything compiled


# ----------------------------------------------------------------------------------------
# r1jax-eval.

CHARS = "0123456789+=Wait"


def write_char_model(path):
    """A scripted Llama with the character tokenizer: after "=" (the prompt's last token)
    it writes 7 </think> 3 <eos>; after "t" it writes 7 (so "Wait" is followed by 7)."""
    tok = make_char_tokenizer(CHARS)
    ids = lambda text: tok.encode(text, add_special_tokens=False)
    (eq, seven, three, t), think = ids("=73t"), tok.convert_tokens_to_ids("</think>")
    script = {eq: seven, seven: think, think: three, three: tok.eos_token_id, t: seven}
    cfg, params = bigram_params([script.get(x, tok.eos_token_id) for x in range(V)])
    save_hf(Decoder(cfg, params=params, sharding=single_device()), str(path), tokenizer=tok)
    return str(path)


def test_eval_cli_budget_flags(tmp_path, capsys):
    model = write_char_model(tmp_path / "model")
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"q": "1+2=", "a": "3"}) + "\n")
    base = [f"--model={model}", f"--benchmarks={questions}", "--question_key=q",
            "--answer_key=a", "--template=plain", "--max_new_tokens=12", "--mesh=1,1,1",
            "--reward_workers=1", "--no_progress"]

    def run(out, *flags):
        assert main(base + [f"--out_dir={tmp_path / out}", *flags]) == 0
        with open(tmp_path / out / "q.json") as f:
            report = json.load(f)
        with open(tmp_path / out / "q.samples.jsonl") as f:
            return report, [json.loads(line) for line in f]

    # --max_waits alone: the budget is max_new_tokens; "</think>" is replaced by "Wait" once.
    report, samples = run("waits", "--max_waits=1")
    assert samples[0]["completion"] == "7Wait7</think>3" and samples[0]["tokens"] == 9
    assert {k: report["settings"][k] for k in ("thinking_budget", "end_think", "wait",
                                               "max_waits")} == {
        "thinking_budget": None, "end_think": "</think>", "wait": "Wait", "max_waits": 1}
    # A budget of 3 cuts the wait string: "</think>" forced at position 3.
    report, samples = run("budget", "--thinking_budget=3", "--max_waits=1", "--wait=Wait")
    assert samples[0]["completion"] == "7Wa</think>3" and samples[0]["tokens"] == 6
    assert report["settings"]["thinking_budget"] == 3
    report, samples = run("off")
    assert samples[0]["completion"] == "7</think>3"
    assert report["settings"]["thinking_budget"] is None and report["settings"]["max_waits"] == 0
    for flags, message in ((["--thinking_budget=0"], "--thinking_budget must be >= 1"),
                           (["--max_waits=-1"], "--max_waits must be >= 0"),
                           (["--thinking_budget=4", "--end_think="],
                            "--end_think='' tokenizes to no tokens"),
                           (["--max_waits=2", "--wait="], "--wait='' tokenizes to no tokens")):
        capsys.readouterr()
        assert main(base + [f"--out_dir={tmp_path / 'bad'}", *flags]) == 2, flags
        assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
