"""Preference data: the layouts, rendering a pair to tokens and response masks, and pairs from
r1jax-rejection-sample output."""

import json

import pytest

from r1jax import dpo
from r1jax.data.preference import (load_pairs, pairs_from_samples, pairs_from_solutions,
                                   select_pair)
from r1jax.data.sources import DataError
from r1jax.models.char_tokenizer import make_char_tokenizer


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_layouts_trl_strings_messages_implicit_prompt_and_light_r1(tmp_path):
    user = {"role": "user", "content": "1+1"}
    rows = [{"prompt": "1+1=", "chosen": "2", "rejected": "3", "ref_chosen_logps": -1.5,
             "ref_rejected_logps": -2.0},
            {"prompt": [user], "chosen": [{"role": "assistant", "content": "2"}],
             "rejected": [{"role": "assistant", "content": "3"}], "id": "m"},
            {"chosen": [user, {"role": "assistant", "content": "2"}],
             "rejected": [user, {"role": "assistant", "content": "3"}]},
            {"chosen": "2", "rejected": "3"},  # strings need a prompt: skipped
            "not json"]
    pairs, stats = load_pairs(write_jsonl(tmp_path / "p.jsonl", rows))
    assert stats.kept == 3 and dict(stats.skipped) == {"missing_field": 1, "bad_json": 1}
    assert pairs[0] == {"prompt": "1+1=", "chosen": "2", "rejected": "3", "id": 1,
                        "ref_chosen_logps": -1.5, "ref_rejected_logps": -2.0}
    assert pairs[1]["id"] == "m" and pairs[1]["prompt"] == [user]
    assert pairs[2]["prompt"] == [user]  # the shared leading turn
    assert pairs[2]["chosen"] == [{"role": "assistant", "content": "2"}]
    light = [{"conversations": [{"from": "human", "value": "1+1"}], "system": "Think.",
              "chosen": {"from": "gpt", "value": "2"}, "rejected": {"from": "gpt", "value": "3"}}]
    pairs, _ = load_pairs(write_jsonl(tmp_path / "l.jsonl", light), "light_r1_dpo")
    assert pairs[0]["prompt"] == [{"role": "system", "content": "Think."}, user]
    assert pairs[0]["rejected"] == [{"role": "assistant", "content": "3"}]
    assert load_pairs(str(tmp_path / "l.jsonl"))[0] == pairs  # auto: conversations
    with pytest.raises(DataError, match="line 4"):
        load_pairs(str(tmp_path / "p.jsonl"), strict=True)
    with pytest.raises(ValueError, match="unknown preference layout 'ranking'"):
        load_pairs(str(tmp_path / "p.jsonl"), "ranking")


def test_tokenize_pair_masks_only_the_response():
    tok = make_char_tokenizer("0123456789+=? ")
    enc = lambda s: tok.encode(s, add_special_tokens=False)
    eos = tok.eos_token_id
    plain = dpo.tokenize_pair(tok, {"prompt": "1+1=", "chosen": "2", "rejected": "11"})
    assert plain.chosen_ids == enc("1+1=") + enc("2") + [eos]
    assert plain.chosen_mask == [0, 0, 0, 0, 1, 1]
    assert plain.rejected_mask == [0, 0, 0, 0, 1, 1, 1]
    # Chat: the character template writes contents and closes assistant turns with <eos>;
    # the earlier assistant turn of a two-turn prompt is not trained on.
    pair = {"prompt": [{"role": "user", "content": "1+1?"},
                       {"role": "assistant", "content": "2"},
                       {"role": "user", "content": "2+2?"}],
            "chosen": [{"role": "assistant", "content": "4"}],
            "rejected": [{"role": "assistant", "content": "5"}], "ref_chosen_logps": -3.0}
    t = dpo.tokenize_pair(tok, pair)
    assert t.chosen_ids == enc("1+1?") + enc("2") + [eos] + enc("2+2?") + enc("4") + [eos]
    assert t.chosen_mask == [0] * 10 + [1, 1]
    assert t.rejected_ids[-2] == enc("5")[0] and t.ref_chosen_logps == -3.0
    with pytest.raises(ValueError, match="has no `rejected`"):
        dpo.tokenize_pair(tok, {"prompt": "1", "chosen": "2"})


def test_select_pair_rules():
    correct = [False, True, True, False, False, True]
    lengths = [9, 7, 3, 12, 12, 3]
    usable = [True, True, True, True, True, True]
    assert select_pair(correct, lengths, usable)[0] == 2  # shortest correct, lowest index
    assert select_pair(correct, lengths, usable, rejected="longest") == (2, 3)
    assert select_pair(correct, lengths, usable, rejected="shortest") == (2, 0)
    draws = {select_pair(correct, lengths, usable, seed=0, prompt_index=i)[1] for i in range(20)}
    assert draws == {0, 3, 4}  # random: every incorrect sample, never a correct one
    assert select_pair(correct, lengths, usable, seed=3, prompt_index=1) == \
        select_pair(correct, lengths, usable, seed=3, prompt_index=1)
    assert select_pair(correct, lengths, [True, True, True, False, False, False]) == (2, 0)
    assert select_pair([True, True], [1, 2], [True, True]) is None
    with pytest.raises(ValueError, match="rejected must be one of"):
        select_pair(correct, lengths, usable, rejected="worst")


def test_pairs_from_rejection_samples(tmp_path):
    """samples.jsonl and sft.jsonl as r1jax-rejection-sample writes them: the prompt and the
    completion prefix come from sft.jsonl; truncated samples are left out."""
    def sample(index, j, completion, correct, tokens, truncated=False):
        return {"id": f"q{index}", "prompt_index": index, "sample": j, "round": 0,
                "completion": completion, "tokens": tokens, "truncated": truncated,
                "reward": float(correct), "verdicts": {"accuracy": float(correct)},
                "correct": correct}
    samples = [sample(0, 0, "x=3 </think> 3", False, 5), sample(0, 1, "x=2 </think> 2", True, 5),
               sample(0, 2, "so x=2 </think> 2", True, 6), sample(0, 3, "x=", False, 50, True),
               sample(1, 0, "4", True, 1), sample(1, 1, "5", True, 1),  # no incorrect
               sample(2, 0, "7", False, 1), sample(2, 1, "8", False, 1),  # no correct
               sample(3, 0, "1", True, 1), sample(3, 1, "0", False, 1)]  # not in sft.jsonl
    path = write_jsonl(tmp_path / "samples.jsonl", samples)
    user = {"role": "user", "content": "Solve x+1=3"}
    sft = [{"messages": [{"role": "system", "content": "S"}, user,
                         {"role": "assistant", "content": "<think>x=2 </think> 2"}],
            "id": "q0", "prompt_index": 0, "sample": 1, "round": 0},
           {"messages": [user, {"role": "assistant", "content": "4"}], "id": "q1",
            "prompt_index": 1, "sample": 0, "round": 0}]
    write_jsonl(tmp_path / "sft.jsonl", sft)
    pairs, counts = pairs_from_samples(path, rejected="longest")
    assert counts == {"prompts": 4, "pairs": 1, "no_correct": 1, "no_incorrect": 1,
                      "no_prompt": 1}
    assert pairs == [{"id": "q0", "prompt": [{"role": "system", "content": "S"}, user],
                      "chosen": [{"role": "assistant", "content": "<think>x=2 </think> 2"}],
                      "rejected": [{"role": "assistant", "content": "<think>x=3 </think> 3"}]}]
    given, counts = pairs_from_samples(path, problems={"q3": "2-1?", "q0": "x+1=3"})
    assert counts["pairs"] == 2 and given[1]["chosen"][0]["content"] == "1"
    pairs, _ = load_pairs(path, seed=0)  # auto: a samples file
    assert [p["id"] for p in pairs] == ["q0"]
    with pytest.raises(DataError, match="does not exist"):
        pairs_from_samples(str(tmp_path / "none.jsonl"))


def test_pairs_from_solutions_reject_another_answer():
    examples = [{"id": i, "question": f"{i}+0", "answer": str(i % 3),
                 "solution": f"= {i % 3}"} for i in range(6)]
    pairs = pairs_from_solutions(examples, seed=1)
    assert len(pairs) == 6
    for ex, p in zip(examples, pairs):
        assert p["chosen"][0]["content"] == ex["solution"]
        assert p["rejected"][0]["content"] != ex["solution"]
    assert pairs == pairs_from_solutions(examples, seed=1)
    with pytest.raises(DataError, match="needs `question`, `solution` and `answer`"):
        pairs_from_solutions([{"id": 0, "question": "q"}])


def test_dpo_config_errors_name_the_key():
    from r1jax.config import ConfigError, load_config
    spec = "configs/dpo/light_r1_dpo.py"
    cfg = load_config(spec, ["dpo.loss_type=ipo", "dpo.beta=0.5"])
    assert (cfg.dpo.loss_type, cfg.dpo.beta, cfg.dpo.reference) == ("ipo", 0.5, "policy")
    for override, message in [("dpo.loss_type=hinge", "'config.dpo.loss_type'"),
                              ("dpo.beta=0", "'config.dpo.beta'"),
                              ("dpo.label_smoothing=0.1", "'config.dpo.label_smoothing'"),
                              ("dpo.reference=frozen", "'config.dpo.reference'"),
                              ("dpo.sample_rejected=worst", "'config.dpo.sample_rejected'")]:
        with pytest.raises(ConfigError, match=message):
            load_config(spec, [override])  # the config's loss is nca_pair: no smoothing
