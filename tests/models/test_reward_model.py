"""Reward models against transformers' sequence-classification models (same random weights)."""

import json
import shutil

import numpy as np
import pytest
import torch
import transformers
from jax.sharding import PartitionSpec as P

from r1jax.models import CheckpointError, UnsupportedModelError
from r1jax.models.reward_model import load_reward_model
from r1jax.rewards import model_reward
from r1jax.rewards import RewardPool, RewardSpec
from r1jax.sharding import make_mesh

# fp32 on both sides; scores have magnitude ~1 (the head is drawn with std 0.25).
FP32_ATOL = 1e-5
PAD = 0
FAMILIES = ("llama", "qwen2")


def make_seq_cls(family, *, vocab=256, num_labels=1, pad_token_id=PAD, seed=0):
    """A transformers *ForSequenceClassification with random weights, norms and biases."""
    torch.manual_seed(seed)
    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab,
                  max_position_embeddings=512, num_labels=num_labels,
                  pad_token_id=pad_token_id)
    if family == "llama":
        cfg = transformers.LlamaConfig(**common, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64})
        model = transformers.LlamaForSequenceClassification(cfg)
    else:
        cfg = transformers.Qwen2Config(**common, rope_theta=1e6)
        model = transformers.Qwen2ForSequenceClassification(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(0.1 * torch.randn_like(p))
        model.score.weight.normal_(0.0, 0.25)
    return model.eval()


def hf_scores(model, tokens, mask=None):
    with torch.no_grad():
        out = model(torch.tensor(np.asarray(tokens), dtype=torch.long),
                    attention_mask=None if mask is None else torch.tensor(mask))
    return out.logits.float().numpy()


def rows_of_lengths(lengths, vocab=256, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, vocab, n) for n in lengths]  # never the pad id 0


def padded(rows, side):
    s = max(len(r) for r in rows)
    tokens = np.full((len(rows), s), PAD, np.int64)
    mask = np.zeros((len(rows), s), np.int64)
    for i, r in enumerate(rows):
        cols = slice(s - len(r), s) if side == "left" else slice(0, len(r))
        tokens[i, cols], mask[i, cols] = r, 1
    return tokens, mask


@pytest.fixture(scope="module", params=FAMILIES)
def checkpoint(request, tmp_path_factory):
    model = make_seq_cls(request.param)
    path = tmp_path_factory.mktemp(request.param + "_rm")
    model.save_pretrained(path)
    return model, str(path)


@pytest.mark.parametrize("side", ["right", "left"])
def test_scores_match_transformers_on_padded_batch(checkpoint, side):
    hf_model, path = checkpoint
    rows = rows_of_lengths([12, 7, 3, 9])
    tokens, mask = padded(rows, side)
    ref = hf_scores(hf_model, tokens, mask)
    rm = load_reward_model(path)
    got = rm.score_tokens(tokens, mask)
    assert got.shape == (4, 1) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=FP32_ATOL, rtol=0)
    # Each padded row scores as the same row alone, and the rows differ from each other.
    alone = np.concatenate([hf_scores(hf_model, r[None]) for r in rows])
    np.testing.assert_allclose(got, alone, atol=FP32_ATOL, rtol=0)
    assert np.ptp(got) > 0.1


def test_a_row_ending_in_the_pad_id_is_read_where_transformers_reads_it(checkpoint):
    hf_model, path = checkpoint
    rows = rows_of_lengths([10, 6])
    rows[1] = np.concatenate([rows[1], [PAD]])  # a real token that equals pad_token_id
    tokens, mask = padded(rows, "right")
    ref = hf_scores(hf_model, tokens, mask)
    got = load_reward_model(path).score_tokens(tokens, mask)
    np.testing.assert_allclose(got, ref, atol=FP32_ATOL, rtol=0)
    # transformers skips that token: the score is the one of the row without it.
    np.testing.assert_allclose(got[1], hf_scores(hf_model, rows[1][None, :-1])[0],
                               atol=FP32_ATOL, rtol=0)
    # Reading the last attended token instead would give another value.
    with torch.no_grad():
        h = hf_model.model(torch.tensor(rows[1][None])).last_hidden_state
        at_last = hf_model.score(h)[0, -1, 0].item()
    assert abs(at_last - got[1, 0]) > 1e-3


def test_without_pad_token_one_row_reads_the_last_token_and_batches_are_refused(tmp_path):
    model = make_seq_cls("qwen2", pad_token_id=None)
    model.save_pretrained(tmp_path)
    rm = load_reward_model(str(tmp_path))
    row = rows_of_lengths([9])[0]
    row[-1] = PAD  # with no pad token, id 0 is an ordinary last token
    np.testing.assert_allclose(rm.score_tokens(row[None]), hf_scores(model, row[None]),
                               atol=FP32_ATOL, rtol=0)
    tokens, mask = padded(rows_of_lengths([5, 3]), "left")
    with pytest.raises(ValueError, match="Cannot handle batch sizes > 1"):
        hf_scores(model, tokens, mask)
    with pytest.raises(ValueError, match="no pad_token_id"):
        rm.score_tokens(tokens, mask)


def test_sharded_on_an_8_device_mesh_gives_the_same_scores(checkpoint):
    hf_model, path = checkpoint
    rows = rows_of_lengths([12, 7, 3, 9, 11, 2, 5, 8])
    tokens, mask = padded(rows, "left")
    rm = load_reward_model(path, mesh=make_mesh(data=2, fsdp=2, tensor=2))
    # The parameters are placed by the logical-axis rules.
    assert rm.decoder.params["layers"]["w_gate"].sharding.spec == P(None, "fsdp", "tensor")
    assert rm.head.sharding.spec == P("fsdp", None)
    np.testing.assert_allclose(rm.score_tokens(tokens, mask), hf_scores(hf_model, tokens, mask),
                               atol=FP32_ATOL, rtol=0)


CONVERSATIONS = [
    ("What is 2 + 2?", "4"),
    ("Name a prime number larger than ten.", "Eleven is prime."),
    ("Say hello.", "Hello! " * 40),  # a longer row: the batches get different lengths
    ([{"role": "system", "content": "Answer briefly."},
      {"role": "user", "content": "Capital of France?"}], "Paris."),
    ("Count to three.", "1, 2, 3"),
    ("", "An empty prompt still has a template around it."),
    ("Is 91 prime?", "No: 91 = 7 x 13."),
]


@pytest.fixture(scope="module")
def qwen_rm_dir(qwen_tokenizer_dir, tmp_path_factory):
    tok = transformers.AutoTokenizer.from_pretrained(qwen_tokenizer_dir)
    model = make_seq_cls("qwen2", vocab=len(tok), pad_token_id=tok.pad_token_id)
    path = tmp_path_factory.mktemp("qwen_rm")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok, str(path)


@pytest.fixture(scope="module")
def chat_scores(qwen_rm_dir):
    """transformers' score of each of CONVERSATIONS, one unpadded row at a time."""
    model, tok, _ = qwen_rm_dir
    return np.array([chat_reference(model, tok, p, c) for p, c in CONVERSATIONS])


def chat_reference(model, tok, prompt, completion):
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    ids = tok.apply_chat_template(messages + [{"role": "assistant", "content": completion}],
                                  tokenize=True, return_dict=False)
    return hf_scores(model, np.asarray(ids)[None])[0, 0]


@pytest.mark.parametrize("mesh", [None, (2, 2, 2)])
def test_score_renders_the_chat_template_and_matches_transformers(qwen_rm_dir, chat_scores,
                                                                 mesh):
    _, tok, path = qwen_rm_dir
    prompts, completions = zip(*CONVERSATIONS)
    rm = load_reward_model(path, tokenizer=tok, batch_size=3,
                           mesh=None if mesh is None else make_mesh(*mesh))
    got = rm.score(list(prompts), list(completions))
    assert got.shape == (len(CONVERSATIONS),) and got.dtype == np.float32
    np.testing.assert_allclose(got, chat_scores, atol=FP32_ATOL, rtol=0)
    assert np.ptp(got) > 0.1


def test_concat_format_scores_prompt_plus_completion(qwen_rm_dir):
    model, tok, path = qwen_rm_dir
    rm = load_reward_model(path, tokenizer=tok, format="concat")
    pairs = [("What is 2 + 2?", " 4"), ("Say hello.", " Hello there, friend.")]
    ref = [hf_scores(model, np.asarray(tok(p + c)["input_ids"])[None])[0, 0] for p, c in pairs]
    np.testing.assert_allclose(rm.score(*zip(*pairs)), ref, atol=FP32_ATOL, rtol=0)
    with pytest.raises(ValueError, match="row 0 renders to .* max_length=4"):
        load_reward_model(path, tokenizer=tok, format="concat", max_length=4).score(*zip(*pairs))


def test_multi_label_model_needs_a_label(tmp_path):
    model = make_seq_cls("llama", num_labels=3)
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="num_labels=3.*pass label="):
        load_reward_model(str(tmp_path))
    rm = load_reward_model(str(tmp_path), label="LABEL_2")
    tokens, mask = padded(rows_of_lengths([6, 4]), "right")
    ref = hf_scores(model, tokens, mask)
    np.testing.assert_allclose(rm.score_tokens(tokens, mask), ref, atol=FP32_ATOL, rtol=0)
    assert rm.label == 2
    with pytest.raises(ValueError, match="label 3 is out of range for num_labels=3"):
        load_reward_model(str(tmp_path), label=3)


def test_wrong_architecture_and_head_shape_are_refused(tmp_path):
    lm = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, vocab_size=64))
    lm.save_pretrained(tmp_path / "lm")
    with pytest.raises(UnsupportedModelError,
                       match=r"'architectures' = \['Qwen2ForCausalLM'\] \(a language model"):
        load_reward_model(str(tmp_path / "lm"))
    make_seq_cls("qwen2", num_labels=2).save_pretrained(tmp_path / "two")
    shutil.copytree(tmp_path / "two", tmp_path / "one")
    cfg_path = tmp_path / "one" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["id2label"], cfg["label2id"] = {"0": "LABEL_0"}, {"LABEL_0": 0}
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"'score.weight' has shape \[2, 64\], "
                                              r"expected \[1, 64\]"):
        load_reward_model(str(tmp_path / "one"))


def test_normalisations_match_hand_computed_values():
    raw = np.array([1.0, 2.0, 3.0, 5.0, 5.0, -1.0])
    groups = np.array([0, 0, 0, 1, 1, 2])
    z = model_reward.normalize_rewards(raw, groups, mode="group_zscore")
    # group 0: mean 2, population std sqrt(2/3); groups of equal scores (or one row) give 0
    np.testing.assert_allclose(z, [-1.224744, 0.0, 1.224744, 0.0, 0.0, 0.0], atol=1e-5)
    np.testing.assert_allclose(
        model_reward.normalize_rewards(raw, None, mode="affine", scale=0.5, shift=-1.0),
        [-0.5, 0.0, 0.5, 1.5, 1.5, -1.5])
    np.testing.assert_allclose(
        model_reward.normalize_rewards(raw, None, mode="sigmoid", scale=2.0, shift=-2.0),
        [0.5, 0.880797, 0.982014, 0.999665, 0.999665, 0.017986], atol=1e-6)
    np.testing.assert_array_equal(model_reward.normalize_rewards(raw, None, mode="none"), raw)


def test_options_are_validated_by_name():
    ok = model_reward.ModelRewardOptions.from_kwargs({"path": "/rm", "normalize": "sigmoid",
                                                      "scale": 2.0})
    assert ok.load_kwargs()["path"] == "/rm"
    for kwargs, message in [({"path": "/rm", "temperature": 1}, "unknown kwarg 'temperature'"),
                            ({}, "needs kwarg 'path'"),
                            ({"path": "/rm", "normalize": "rank"}, "normalize 'rank'"),
                            ({"path": "/rm", "scale": 3.0}, "scale / shift apply to"),
                            ({"path": "/rm", "batch_size": 0}, "batch_size must be >= 1"),
                            ({"arch": "qwen2.5-0.5b"}, "needs kwarg 'tokenizer'")]:
        with pytest.raises(ValueError, match=message):
            model_reward.ModelRewardOptions.from_kwargs(kwargs)


def test_model_reward_scores_question_and_full_completion_then_adds_to_pool_result(
        qwen_rm_dir):
    model, tok, path = qwen_rm_dir
    options = model_reward.ModelRewardOptions.from_kwargs(
        {"path": path, "normalize": "group_zscore", "batch_size": 4})
    reward = model_reward.ModelReward(load_reward_model(**options.load_kwargs()), options)
    first = {"question": "What is 2 + 2?", "completion_prefix": "<think>"}
    second = {"question": "Is 91 prime?"}
    examples = [first, dict(first), first, second, dict(second)]
    completions = ["4</think> \\boxed{4}", "5</think> 5", "22", "No.", "Yes, \\boxed{prime}."]
    raw = np.array([chat_reference(model, tok, ex["question"], ex.get("completion_prefix", "")
                                   + c) for ex, c in zip(examples, completions)])
    ref = np.concatenate([(g - g.mean()) / (g.std() + 1e-6) for g in (raw[:3], raw[3:])])
    np.testing.assert_allclose(reward(completions, examples, group_ids=[0, 0, 0, 1, 1]), ref,
                               atol=1e-4)
    pool_fns, rm_fn = model_reward.split_specs([RewardSpec("boxed", 1.0),
                                                RewardSpec("reward_model", 0.5)])
    assert [f.name for f in pool_fns] == ["boxed"] and rm_fn.name == "reward_model"
    with model_reward.PoolWithModelReward(RewardPool(pool_fns, num_workers=1), reward,
                                          rm_fn.weight) as pool:
        result = pool.score(completions, examples)  # groups: rows with the same question
    np.testing.assert_allclose(result.per_function["reward_model"], ref, atol=1e-4)
    np.testing.assert_array_equal(result.per_function["boxed"], [1, 0, 0, 0, 1])
    np.testing.assert_allclose(result.total, [1, 0, 0, 0, 1] + 0.5 * ref, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_random_reward_model_written_by_r1jax_loads_in_transformers(qwen_tokenizer_dir,
                                                                      tmp_path, family):
    """`python -m r1jax.models.reward_model OUT --tokenizer DIR`: the directory loads as
    transformers' *ForSequenceClassification, whose chat scores equal the in-memory model's
    and those of r1jax loading the directory back."""
    from r1jax.models import reward_model as rmod
    from r1jax.recipes import TINY_ARCH
    out = tmp_path / "rm"
    assert rmod.main([str(out), "--tokenizer", qwen_tokenizer_dir, "--family", family,
                      "--seed", "3"]) == 0
    # The same model made on a 2 x 2 x 2 mesh, as the trainer builds a reward entry's
    # `arch` (scores compared below).
    on_mesh = rmod.random_reward_model(dict(TINY_ARCH, model_type=family), qwen_tokenizer_dir,
                                       seed=3, mesh=make_mesh(2, 2, 2))
    written = rmod.random_reward_model(dict(TINY_ARCH, model_type=family), qwen_tokenizer_dir,
                                       seed=3)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert type(model).__name__ == {"llama": "LlamaForSequenceClassification",
                                    "qwen2": "Qwen2ForSequenceClassification"}[family]
    tok = transformers.AutoTokenizer.from_pretrained(out)
    want = np.array([chat_reference(model, tok, p, c) for p, c in CONVERSATIONS])
    prompts, completions = map(list, zip(*CONVERSATIONS))
    np.testing.assert_allclose(written.score(prompts, completions), want, atol=1e-6, rtol=1e-4)
    np.testing.assert_allclose(load_reward_model(str(out)).score(prompts, completions), want,
                               atol=1e-6, rtol=1e-4)
    np.testing.assert_allclose(on_mesh.score(prompts, completions), want, atol=1e-6, rtol=1e-4)
    assert np.ptp(want) > 1e-4  # the rows score differently
    with pytest.raises(UnsupportedModelError, match="unknown reward model arch preset 'qwen9'"):
        rmod.random_reward_model("qwen9", qwen_tokenizer_dir)
    with pytest.raises(UnsupportedModelError, match="model_type 'gpt2' is not one of"):
        rmod.random_reward_model(dict(TINY_ARCH, model_type="gpt2"), qwen_tokenizer_dir)
