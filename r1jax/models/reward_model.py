"""Reward models: Hugging Face sequence-classification checkpoints scored on the mesh.

A `LlamaForSequenceClassification` or `Qwen2ForSequenceClassification` checkpoint is a decoder
(tensors under `model.`) plus a linear head `score.weight` [N, D] without bias, applied to the
final-norm hidden state. The scores of a sequence are that head at one token, which
transformers picks from the token ids alone: the rightmost token whose id is not config.json's
`pad_token_id` (position 0 when every id is), or the last position when there is no pad token
(allowed for a single row only). With left padding that is always the last position.

    rm = load_reward_model("/models/Skywork-Reward-Llama-3.1-8B", mesh=mesh)
    rewards = rm.score(["What is 2+2?"], ["4"])        # [1] float32

Glossary: B rows, S sequence length, D model dim, N labels.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from r1jax.config import ModelConfig
from r1jax.models import hf_config, hf_io
from r1jax.models.decoder import Decoder, ParamSpec, Params, final_hidden
from r1jax.models.hf_config import UnsupportedModelError
from r1jax.models.tokenizer import load_tokenizer
from r1jax.sharding import Sharding, single_device

ARCHITECTURES = {"LlamaForSequenceClassification": "llama",
                 "Qwen2ForSequenceClassification": "qwen2"}
FORMATS = ("auto", "chat", "concat")
HEAD_MAP = hf_io.WeightMap(("score",), "score.weight", 1)  # ours [D, N], HF [N, D]
MIN_BUCKET = 64
Prompt = Union[str, Sequence[dict]]


def last_token_index(tokens: np.ndarray, pad_token_id: Optional[int]) -> np.ndarray:
    """transformers' pooling position of each row of a [B, S] batch of token ids.

    The rightmost position whose id is not `pad_token_id` (0 when every id is); without a pad
    token, the last position, which transformers accepts for one row only.

    Raises:
      ValueError: `pad_token_id` is None and B > 1.
    """
    tokens = np.asarray(tokens)
    if pad_token_id is None:
        if tokens.shape[0] != 1:
            raise ValueError(f"the reward model's config.json has no pad_token_id, so (as in "
                             f"transformers) it cannot find the last token of a batch of "
                             f"{tokens.shape[0]} rows; score one row at a time")
        return np.full((1,), tokens.shape[1] - 1, np.int32)
    positions = np.arange(tokens.shape[1], dtype=np.int32)
    return (positions * (tokens != pad_token_id)).argmax(-1).astype(np.int32)


def sequence_scores(params: Params, head: jax.Array, tokens: jax.Array,
                    segment_ids: jax.Array, last: jax.Array, cfg: ModelConfig,
                    sharding: Optional[Sharding] = None) -> jax.Array:
    """Float32 head outputs [B, N] at position `last` [B] of each row.

    Args:
      params: decoder parameters (no LM head needed).
      head: [D, N] score head.
      tokens: [B, S] int.
      segment_ids: [B, S]; 0 marks padding (tokens attend their own segment only).
      last: [B] int, the position read in each row.
    """
    h = final_hidden(params, tokens, cfg, segment_ids=segment_ids, sharding=sharding)
    h_last = jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]  # [B, D]
    return jnp.einsum("bd,dn->bn", h_last, head.astype(cfg.dtype),
                      preferred_element_type=jnp.float32)


def bucket_length(n: int, max_length: int, min_bucket: int = MIN_BUCKET) -> int:
    """The padded length of a batch whose longest row has n tokens: the next power of two
    (at least `min_bucket`), capped at `max_length`."""
    return min(max_length, max(min_bucket, 1 << max(0, n - 1).bit_length()))


class RewardModel:
    """A sequence-classification model: decoder, score head and tokenizer on one mesh.

    The decoder is an r1jax `Decoder` whose config has `tie_embeddings=True`: the checkpoint
    holds no LM head, and the tied layout is the one without a separate head (its language-
    model logits carry no meaning here).

    Attributes:
      decoder: the Decoder holding the body's parameters, config and sharding.
      head: [D, N] score head (`score.weight` transposed), sharded like the LM head's D axis.
      tokenizer: a transformers tokenizer, or None (then only `score_tokens` works).
      pad_token_id: config.json's `pad_token_id` (transformers' pooling rule uses this one).
      label: the head output `score` returns (0 for a one-label model).
      format: "chat" renders (prompt, completion) through the tokenizer's chat template,
        "concat" tokenizes prompt + completion as one text (with the tokenizer's own special
        tokens), "auto" is "chat" when the tokenizer has a template.
      max_length: longest rendered row `score` accepts (also the largest padded length).
      batch_size: rows per device program in `score` (rounded up to a multiple of the mesh's
        batch parallelism).
    """

    def __init__(self, decoder: Decoder, head: jax.Array, tokenizer: Any, *,
                 pad_token_id: Optional[int], label: int = 0, format: str = "auto",
                 max_length: int = 4096, batch_size: int = 32):
        if format not in FORMATS:
            raise ValueError(f"reward model format {format!r} is not one of {FORMATS}")
        if max_length < 1 or batch_size < 1:
            raise ValueError(f"max_length ({max_length}) and batch_size ({batch_size}) must be "
                             ">= 1")
        if not 0 <= label < head.shape[1]:
            raise ValueError(f"label {label} is out of range for a head of {head.shape[1]} "
                             "labels")
        self.decoder = decoder
        self.head = head
        self.tokenizer = tokenizer
        self.pad_token_id = pad_token_id
        self.label = label
        self.format = format
        self.max_length = max_length
        self.batch_size = batch_size
        self.sharding: Sharding = decoder.sharding or single_device()
        self._params = decoder.params
        self._scores = jax.jit(functools.partial(sequence_scores, cfg=decoder.config,
                                                 sharding=self.sharding),
                               out_shardings=self.sharding.replicated)

    @property
    def config(self) -> ModelConfig:
        return self.decoder.config

    @property
    def num_labels(self) -> int:
        return int(self.head.shape[1])

    def score_tokens(self, tokens: np.ndarray,
                     attention_mask: Optional[np.ndarray] = None) -> np.ndarray:
        """Head outputs [B, N] float32 of a batch of token ids, as transformers computes them.

        Args:
          tokens: [B, S] int, left- or right-padded with `pad_token_id`.
          attention_mask: [B, S] 1 for real tokens, 0 for padding; default all ones (pads
            are then attended, as in transformers).
        Raises:
          ValueError: no pad token and B > 1 (see `last_token_index`), or mismatched shapes.
        """
        tokens = np.asarray(tokens, np.int32)
        mask = (np.ones_like(tokens) if attention_mask is None
                else np.asarray(attention_mask, np.int32))
        if tokens.ndim != 2 or mask.shape != tokens.shape:
            raise ValueError(f"tokens {tokens.shape} and attention_mask {mask.shape} must be "
                             "the same [B, S] shape")
        return self._run(tokens, mask, last_token_index(tokens, self.pad_token_id))

    def encode(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> list[list[int]]:
        """Token ids of each (prompt, completion) as `format` renders them.

        A prompt is a user message, or a list of chat messages the completion answers.
        """
        if self.tokenizer is None:
            raise ValueError("this reward model has no tokenizer: pass `tokenizer` to "
                             "load_reward_model, or score token ids with score_tokens")
        chat = self.format == "chat" or (self.format == "auto"
                                         and bool(getattr(self.tokenizer, "chat_template", None)))
        if not chat:
            bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
            if bad:
                raise ValueError(f"prompt {bad[0]} is a list of messages, which needs a chat "
                                 "template (format 'concat' joins plain strings)")
            return self.tokenizer([p + c for p, c in zip(prompts, completions)])["input_ids"]
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError("format 'chat' needs a tokenizer with a chat template; this one "
                             "has none (use format 'concat')")
        texts = []
        for p, c in zip(prompts, completions):
            messages = [{"role": "user", "content": p}] if isinstance(p, str) else list(p)
            texts.append(self.tokenizer.apply_chat_template(
                messages + [{"role": "assistant", "content": c}], tokenize=False))
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def score(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> np.ndarray:
        """The reward [B] float32 of each completion to its prompt.

        Each row's reward is what transformers gives for that row alone (unpadded): rows are
        sorted by length, left-padded to a bucketed length and scored `batch_size` rows per
        device program. Every process of a multi-host job must call this with the same rows.

        Raises:
          ValueError: mismatched lengths, or a rendered row that is empty or longer than
            `max_length` (named by index).
        """
        if len(prompts) != len(completions):
            raise ValueError(f"got {len(prompts)} prompts and {len(completions)} completions")
        if not len(prompts):
            return np.zeros((0,), np.float32)
        ids = self.encode(prompts, completions)
        for i, row in enumerate(ids):
            if not 0 < len(row) <= self.max_length:
                raise ValueError(f"row {i} renders to {len(row)} tokens; the reward model "
                                 f"takes 1 to max_length={self.max_length}")
        lengths = np.array([len(row) for row in ids])
        order = np.argsort(lengths, kind="stable")
        rows = -(-self.batch_size // self.sharding.batch_parallelism)
        rows *= self.sharding.batch_parallelism
        out = np.zeros(len(ids), np.float32)
        for start in range(0, len(ids), rows):
            chunk = order[start:start + rows]
            length = bucket_length(int(lengths[chunk].max()), self.max_length)
            tokens, mask, last = self._left_padded([ids[i] for i in chunk], rows, length)
            out[chunk] = self._run(tokens, mask, last)[:len(chunk), self.label]
        return out

    def _left_padded(self, ids: list, rows: int, length: int) -> tuple:
        tokens = np.zeros((rows, length), np.int32)
        mask = np.zeros((rows, length), np.int32)
        last = np.full((rows,), length - 1, np.int32)
        for r, row in enumerate(ids):
            tokens[r, length - len(row):] = row
            mask[r, length - len(row):] = 1
            if self.pad_token_id is not None:  # transformers' rule on the unpadded row
                offset = length - len(row)
                last[r] = offset + last_token_index(np.asarray([row]), self.pad_token_id)[0]
        return tokens, mask, last

    def _run(self, tokens: np.ndarray, mask: np.ndarray, last: np.ndarray) -> np.ndarray:
        put = lambda x, names: jax.make_array_from_callback(
            x.shape, self.sharding.named(names, x.shape), lambda index: x[index])
        out = self._scores(self._params, self.head, put(tokens, ("act_batch", "act_seq")),
                           put(mask, ("act_batch", "act_seq")), put(last, ("act_batch",)))
        return np.asarray(out.addressable_shards[0].data)


def _num_labels(hf: dict) -> int:
    """transformers' num_labels: the size of id2label, else `num_labels`, else 2."""
    if isinstance(hf.get("id2label"), dict) and hf["id2label"]:
        return len(hf["id2label"])
    return int(hf.get("num_labels", 2))


def _label_index(hf: dict, num_labels: int, label: Union[None, int, str]) -> int:
    names = {str(v): int(k) for k, v in (hf.get("id2label") or {}).items()}
    if label is None:
        if num_labels != 1:
            raise ValueError(f"the reward model has num_labels={num_labels} (labels "
                             f"{sorted(names, key=names.get) or list(range(num_labels))}); "
                             "pass label=<index or name> to choose the output used as reward")
        return 0
    if isinstance(label, str):
        if label not in names:
            raise ValueError(f"label {label!r} is not one of the model's labels "
                             f"{sorted(names, key=names.get)}")
        return names[label]
    if not 0 <= int(label) < num_labels:
        raise ValueError(f"label {label} is out of range for num_labels={num_labels}")
    return int(label)


def _check_architecture(hf: dict, path: str) -> str:
    archs = hf.get("architectures") or []
    if len(archs) != 1 or archs[0] not in ARCHITECTURES:
        lm = " (a language model with no score head)" if any(
            a in hf_config.FAMILIES.values() for a in archs) else ""
        raise UnsupportedModelError(
            f"{os.path.join(path, 'config.json')}: field 'architectures' = {archs!r}{lm}: "
            f"reward models must be one of {sorted(ARCHITECTURES)}")
    family = ARCHITECTURES[archs[0]]
    if hf.get("model_type", family) != family:
        raise UnsupportedModelError(f"{os.path.join(path, 'config.json')}: field 'model_type'"
                                    f" = {hf['model_type']!r} does not match {archs[0]}")
    return family


def reward_model_config(hf: dict, path: str, dtype: str = "float32",
                        compute_dtype: Optional[str] = None,
                        **model_options: Any) -> tuple[ModelConfig, ParamSpec]:
    """(the decoder's ModelConfig, the score head's ParamSpec [D, num_labels]) of a
    sequence-classification checkpoint's config.json `hf` (read from `path`).

    Raises:
      UnsupportedModelError: another architecture.
    """
    family = _check_architecture(hf, path)
    num_labels = _num_labels(hf)
    body = {k: v for k, v in hf.items() if k != "num_labels"}
    body.update(architectures=[hf_config.FAMILIES[family]], tie_word_embeddings=True)
    cfg = hf_config.model_config_from_hf(body, param_dtype=dtype, dtype=compute_dtype or dtype,
                                         **model_options)
    return cfg, ParamSpec((cfg.hidden_size, num_labels), ("embed", None), "normal")


def load_reward_model(path: str, *, tokenizer: Any = None, label: Union[None, int, str] = None,
                      dtype: str = "float32", compute_dtype: Optional[str] = None,
                      mesh: Union[None, Mesh, Sharding] = None, format: str = "auto",
                      max_length: int = 4096, batch_size: int = 32,
                      **model_options: Any) -> RewardModel:
    """Loads a `LlamaForSequenceClassification` / `Qwen2ForSequenceClassification` directory.

    Args:
      path: local directory with config.json and safetensors (decoder under `model.`, head
        `score.weight`).
      tokenizer: a transformers tokenizer or a directory holding one; default: the model
        directory's tokenizer, if it has one.
      label: which head output is the reward (index or id2label name); needed when
        num_labels > 1.
      dtype, compute_dtype, mesh, **model_options: as for `load_hf`.
      format, max_length, batch_size: see `RewardModel`.
    Raises:
      UnsupportedModelError: another architecture (e.g. a CausalLM), or a decoder feature
        r1jax lacks.
      CheckpointError: missing, mis-shaped or unexpected tensors (e.g. a `score.weight` whose
        rows do not match num_labels).
      ValueError: num_labels > 1 without `label`, or a label the model does not have.
    """
    hf = hf_io.read_hf_config(path)
    cfg, head_spec = reward_model_config(hf, path, dtype, compute_dtype, **model_options)
    label_index = _label_index(hf, head_spec.shape[1], label)
    sharding = hf_io._as_sharding(mesh)
    params = hf_io.load_params(path, cfg, sharding, extra=((HEAD_MAP, head_spec),))
    head = params.pop("score")
    decoder = Decoder(cfg, params=params, sharding=sharding, source_dir=os.path.abspath(path),
                      source_config=hf)
    if tokenizer is None:
        try:
            tokenizer = load_tokenizer(path)
        except FileNotFoundError:
            tokenizer = None
    elif isinstance(tokenizer, str):
        tokenizer = load_tokenizer(tokenizer)
    return RewardModel(decoder, head, tokenizer, pad_token_id=hf.get("pad_token_id"),
                       label=label_index, format=format, max_length=max_length,
                       batch_size=batch_size)


def save_reward_model(rm: RewardModel, out_dir: str, *, dtype: str = "float32",
                      max_shard_bytes: int = 5 * 2**30) -> str:
    """Writes `rm` as a Hugging Face sequence-classification directory (decoder under
    `model.`, `score.weight` [N, D], config.json with the family's *ForSequenceClassification
    architecture, num_labels and pad_token_id, the tokenizer), atomically; returns out_dir."""
    cfg = rm.decoder.config
    np_dtype = np.dtype(jnp.dtype(dtype))
    head = np.ascontiguousarray(hf_io.to_host(rm.head).T).astype(np_dtype)
    plan = hf_io._save_plan(rm.decoder.params, cfg, np_dtype)
    plan.append((HEAD_MAP.hf_name, head.shape, np_dtype, lambda: head))
    hf = hf_config.hf_config_from_model(cfg, dtype, None)
    num_labels = head.shape[0]
    hf.update(architectures=[_SEQ_CLS[hf["model_type"]]], pad_token_id=rm.pad_token_id,
              id2label={str(i): f"LABEL_{i}" for i in range(num_labels)},
              label2id={f"LABEL_{i}": i for i in range(num_labels)})
    out_dir = os.path.abspath(out_dir)
    hf_io.write_hf_dir(out_dir, plan, hf, tokenizer=rm.tokenizer,
                       max_shard_bytes=max_shard_bytes)
    return out_dir


_SEQ_CLS = {family: arch for arch, family in ARCHITECTURES.items()}


def arch_config(arch: Union[str, dict], **fields: Any) -> dict:
    """config.json of a one-label sequence-classification model of `arch` (a preset name
    of `r1jax.models.presets`, or config.json fields with `model_type` "qwen2" or
    "llama"), with `fields` (vocab_size, pad_token_id, ...) set.

    Raises:
      UnsupportedModelError: an unknown preset or another model_type.
    """
    from r1jax.models.presets import PRESETS
    if isinstance(arch, str):
        if arch not in PRESETS:
            raise UnsupportedModelError(f"unknown reward model arch preset {arch!r} (known: "
                                        f"{', '.join(sorted(PRESETS))})")
        arch = PRESETS[arch]
    family = arch.get("model_type", "qwen2")
    if family not in _SEQ_CLS:
        raise UnsupportedModelError(f"reward model arch: model_type {family!r} is not one of "
                                    f"{sorted(_SEQ_CLS)}")
    return dict(arch, model_type=family, architectures=[_SEQ_CLS[family]], num_labels=1,
                **fields)


def random_reward_model(arch: Union[str, dict], tokenizer: Any, *, seed: int = 0,
                        mesh: Union[None, Mesh, Sharding] = None, dtype: str = "float32",
                        **options: Any) -> RewardModel:
    """A one-label reward model with random N(0, 0.02) weights of `arch` (`arch_config`)
    over `tokenizer` (a tokenizer or its directory: the vocabulary size and pad id), made
    directly on `mesh`'s shards: smoke runs of recipes that name a reward model, where none
    can be downloaded. `options`: RewardModel's format, max_length, batch_size."""
    from flax import nnx

    from r1jax.models.decoder import INIT_STD
    if isinstance(tokenizer, str):
        tokenizer = load_tokenizer(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
        else tokenizer.eos_token_id
    hf = arch_config(arch, vocab_size=len(tokenizer), pad_token_id=pad)
    cfg, head_spec = reward_model_config(hf, "arch", dtype)
    sharding = hf_io._as_sharding(mesh) if mesh is not None else None
    decoder = Decoder(cfg, rngs=nnx.Rngs(seed), sharding=sharding)
    head = (INIT_STD * jax.random.normal(jax.random.key(seed + 1), head_spec.shape,
                                         jnp.float32)).astype(cfg.param_dtype)
    if sharding is not None:
        head = jax.device_put(head, sharding.named(head_spec.axes, head.shape))
    return RewardModel(decoder, head, tokenizer, pad_token_id=pad, **options)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m r1jax.models.reward_model OUT --tokenizer DIR [--family qwen2|llama]`:
    writes a random-weight reward model of the tiny recipes' size (`r1jax.recipes.TINY_ARCH`)
    over that tokenizer, for smoke runs of configs whose rewards name a reward model."""
    import argparse
    import sys

    from r1jax.recipes import TINY_ARCH
    p = argparse.ArgumentParser(prog="python -m r1jax.models.reward_model",
                                description=main.__doc__)
    p.add_argument("out")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory")
    p.add_argument("--family", choices=sorted(set(ARCHITECTURES.values())), default="qwen2")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(sys.argv[1:] if argv is None else list(argv))
    if not os.path.isdir(a.tokenizer):
        p.error(f"tokenizer directory not found: {a.tokenizer}")
    rm = random_reward_model(dict(TINY_ARCH, model_type=a.family), a.tokenizer, seed=a.seed)
    print(save_reward_model(rm, a.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
