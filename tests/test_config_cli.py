"""Every config field can be set from the command line, to exactly the value typed.

The fields come from the schema (dataclasses.fields of every RunConfig section, recursively,
into the reward functions' element section); a new field that the command line cannot set,
or that has no valid value here, fails `test_every_field_is_settable_from_the_command_line`.
Values go through `load_config`, the parser `r1jax-train --config.KEY=VALUE` uses.
"""

import dataclasses
import os
import subprocess
import sys
import typing

import pytest

import r1jax
from r1jax import train
from r1jax.config import ConfigError, RunConfig, _is_optional, base_config, run_config_from

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs", "demo_cpu.py")
# The mixture's fields are set on a config that has a mixture (an element's keys exist
# only once a config file made the element), as rewards.functions[0] is on the demo.
MIXTURE = os.path.join(ROOT, "configs", "mixture_math_code_logic.py")

# The curriculum's stages likewise, on the shipped config that has them.
CURRICULUM = os.path.join(ROOT, "configs", "sft", "light_r1.py")

BASE = r1jax.load_config(DEMO)
MIXTURE_BASE = r1jax.load_config(MIXTURE)
CURRICULUM_BASE = r1jax.load_config(CURRICULUM)


def config_for(key):
    if key.startswith("data.mixture"):
        return MIXTURE, MIXTURE_BASE
    if key.startswith("sft.stages"):
        return CURRICULUM, CURRICULUM_BASE
    return DEMO, BASE


@dataclasses.dataclass(frozen=True)
class Case:
    """The value a field should hold and the overrides that set it (default: `key=value`)."""

    value: typing.Any
    overrides: tuple = ()
    also: tuple = ()  # overrides that must come first for the value to validate


# Fields whose value is constrained (choices, relations to other fields) or needs companion
# overrides; every other field takes a value derived from its type (see `generic_case`).
ARCH = {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1}
CASES = {
    "dpo.loss_type": Case("ipo"), "dpo.reference": Case("precomputed"),
    "dpo.overflow": Case("drop"), "dpo.sample_chosen": Case("random"),
    "dpo.sample_rejected": Case("longest"),
    "distributed.coordinator_address": Case("10.0.0.2:1234"),
    "distributed.local_device_ids": Case("0,1"),
    "model.path": Case("/models/elsewhere", also=("model.arch=None",)),
    "model.preset": Case("qwen2.5-0.5b", also=("model.arch=None",)),
    "model.arch": Case(ARCH),
    "model.tokenizer": Case("/tokenizers/elsewhere", also=("model.char_vocab=None",)),
    "model.param_dtype": Case("bfloat16"),
    "model.dtype": Case("bfloat16"),
    "model.remat": Case("dots_no_batch"),
    "model.attention_impl": Case("pallas"),
    "mesh.fsdp": Case(2),
    "mesh.rules": Case({"batch": ["data", "fsdp"], "vocab": None}),
    "data.source": Case("gsm8k_train"),
    "data.template": Case("r1_zero"),
    "data.task_options": Case({"terms": 3, "digits": 1}),
    "rewards.functions": Case(
        (r1jax.config.RewardFunctionConfig("accuracy", 2.0, {"mode": "boxed"}),),
        overrides=("rewards.functions=[{'name': 'accuracy', 'weight': 2.0, "
                   "'kwargs': {'mode': 'boxed'}}]",)),
    "rewards.functions[0].name": Case("boxed", also=("rewards.accuracy=boxed",)),
    # An element's dict is set key by key (its keys: the config file's).
    "rewards.functions[0].kwargs": Case({"mode": "boxed"},
                                        overrides=("rewards.functions[0].kwargs.mode=boxed",)),
    "rewards.accuracy": Case("format"),
    "algo.adv": Case("rloo"),
    "algo.clip_c": Case(3.0),
    "algo.agg": Case("seq-mean-token-sum-norm"),
    "algo.ratio_level": Case("sequence"),
    "algo.kl_kind": Case("k2"),
    "algo.minibatches": Case(4),
    "optim.schedule": Case("cosine"),
    "sft.overflow": Case("drop"),
    "sft.stages": Case((r1jax.config.SFTStage("a.jsonl", epochs=2),),
                       overrides=("sft.stages=[{'source': 'a.jsonl', 'epochs': 2}]",)),
    "sft.stages[0].where": Case({"level": [1, 3]},
                                overrides=("sft.stages[0].where={'level': [1, 3]}",)),
    "sft.stages[0].pass_rate_min": Case(0.25),
    "sft.fields": Case({"prompt": "question", "response": "answer"}),
    "train.prompts_per_step": Case(32),
    "train.wandb_mode": Case("online"),
    "data.mixture": Case(
        (r1jax.config.MixtureSource("math", "gsm8k_train"),),
        overrides=("data.mixture=[{'name': 'math', 'source': 'gsm8k_train'}]",
                   "data.mixture_schedule=[]")),
    "data.mixture[0].name": Case("algebra"),
    "data.mixture[0].template": Case("plain"),
    "data.mixture[0].functions": Case(
        (r1jax.config.RewardFunctionConfig("boxed", 1.0, {}),),
        overrides=("data.mixture[0].functions=[{'name': 'boxed'}]",),
        also=("data.mixture[0].accuracy=boxed",)),
    "data.mixture[0].functions[0].name": Case("boxed", also=("data.mixture[0].accuracy=boxed",)),
    "data.mixture[0].functions[0].kwargs": Case(
        {"mode": "regex"}, overrides=("data.mixture[0].functions[0].kwargs.mode=regex",)),
    "data.mixture[0].accuracy": Case("boxed", also=(
        "data.mixture[0].functions=[{'name': 'boxed'}]",)),
    "data.mixture[0].task_options": Case({"terms": 3},
                                         overrides=("data.mixture[0].task_options={'terms': 3}",)),
    "data.mixture_schedule": Case(
        (r1jax.config.MixtureStage(5, (1.0, 0.0, 0.0)),),
        overrides=("data.mixture_schedule=[{'from_step': 5, 'weights': (1.0, 0.0, 0.0)}]",)),
    "data.mixture_schedule[0].weights": Case((0.5, 0.25, 0.25),
                                            overrides=("data.mixture_schedule[0].weights="
                                                       "(0.5, 0.25, 0.25)",)),
}


def leaf_fields(cls=RunConfig, prefix=""):
    """(dotted key, type hint) of every settable field; tuple-of-section fields also
    contribute their element's fields as `key[0].field`."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, tp = prefix + f.name, _is_optional(hints[f.name])[1]
        if dataclasses.is_dataclass(tp):
            yield from leaf_fields(tp, key + ".")
            continue
        yield key, hints[f.name]
        items = typing.get_args(tp) if typing.get_origin(tp) is tuple else ()
        if items and dataclasses.is_dataclass(items[0]):
            yield from leaf_fields(items[0], key + "[0].")


FIELDS = dict(leaf_fields())


def value_at(cfg, key):
    value = cfg
    for part in key.split("."):
        name, _, index = part.partition("[")
        value = getattr(value, name)
        if index:
            value = value[int(index.rstrip("]"))]
    return value


def generic_case(key, hint):
    """A valid value of the field's own type, different from the demo config's."""
    current = value_at(config_for(key)[1], key)
    tp = _is_optional(hint)[1]
    if tp is bool:
        return Case(not current)
    if tp is int:
        return Case(3 if current is None else current + 1)
    if tp is float:
        return Case(0.75 if current is None else current / 2 + 0.125)
    if tp is str:
        return Case(f"/tmp/cli-{key.replace('.', '-')}")
    raise AssertionError(f"no command-line value for {key} ({hint}): add it to CASES")


def cli_text(value):
    return value if isinstance(value, str) else repr(value)


def case_for(key):
    case = CASES.get(key) or generic_case(key, FIELDS[key])
    overrides = case.overrides or (f"{key}={cli_text(case.value)}",)
    return case.value, list(case.also) + list(overrides)


def test_the_schema_walk_reaches_every_section():
    sections = {key.split(".")[0] for key in FIELDS}
    assert sections == {f.name for f in dataclasses.fields(RunConfig)}
    assert {"algo.clip_c", "model.arch", "rewards.functions[0].weight",
            "train.wandb_project"} <= set(FIELDS)
    assert not set(CASES) - set(FIELDS), "CASES names fields the schema does not have"


@pytest.mark.parametrize("key", sorted(FIELDS))
def test_every_field_is_settable_from_the_command_line(key):
    value, overrides = case_for(key)
    path, base = config_for(key)
    assert value != value_at(base, key), "the test value must differ from the demo's"
    got = value_at(r1jax.load_config(path, overrides), key)
    assert got == value and type(got) is type(value)


NONE_COMPANIONS = {  # what keeps the model section valid once the field is None
    "model.path": ("model.preset=qwen2.5-0.5b",),
    "model.preset": ("model.path=/models/elsewhere",),
    "model.arch": ("model.path=/models/elsewhere",),
    "model.tokenizer": ("model.char_vocab=0123",),
    "model.char_vocab": ("model.tokenizer=/tokenizers/elsewhere",),
}
OPTIONAL = sorted(k for k, hint in FIELDS.items() if _is_optional(hint)[0])


@pytest.mark.parametrize("key", OPTIONAL)
def test_every_optional_field_can_be_set_back_to_none(key):
    _, overrides = case_for(key)
    companions = list(NONE_COMPANIONS.get(key, ()))
    path = config_for(key)[0]
    cfg = r1jax.load_config(path, overrides + [f"{key}=None"] + companions)
    assert value_at(cfg, key) is None
    # The last override of a key wins, whichever way round.
    value, overrides = case_for(key)
    cfg = r1jax.load_config(path, [f"{key}=None"] + overrides)
    assert value_at(cfg, key) == value


def test_dict_fields_take_a_key_of_their_current_value():
    cfg = r1jax.load_config(DEMO, ["model.arch.hidden_size=64", "data.task_options.terms=3",
                                   "rewards.functions[1].weight=0.5"])
    assert cfg.model.arch["hidden_size"] == 64 and cfg.model.arch["num_hidden_layers"] == 2
    assert cfg.data.task_options == {"terms": 3, "digits": 2}
    assert [f.weight for f in cfg.rewards.functions] == [1.0, 0.5]


@pytest.mark.parametrize("override,message", [
    ("algo.clip_c=abc", "could not convert string to float"),
    ("algo.min_train_prompts=2.5", "invalid literal for int"),
    ("rewards.functions[5].weight=1.0", "index out of range"),
    ("rewards.accuracy[0]=x", "'accuracy' is not a list of sections"),
    ("train.wandb_mode=sometimes", "'config.train.wandb_mode': must be one of"),
    ("algo.clip_c=0.5", "'config.algo.clip_c': must be > 1 or None"),
])
def test_bad_values_fail_with_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        r1jax.load_config(DEMO, [override])


def test_config_files_assign_values_and_none_to_typed_placeholders():
    c = base_config()
    c.model.update(path="/models/x", tokenizer=None)
    c.algo.clip_c = 3            # an int into a float field becomes a float
    c.eval.max_new_tokens = 64
    c.train.wandb_project = "p"
    c.train.wandb_project = None
    cfg = run_config_from(c)
    assert cfg.algo.clip_c == 3.0 and type(cfg.algo.clip_c) is float
    assert (cfg.eval.max_new_tokens, cfg.train.wandb_project) == (64, None)
    with pytest.raises(TypeError):
        c.eval.max_new_tokens = 1.5   # a float into an int field is refused at assignment


def test_trainer_entry_point_parses_overrides(monkeypatch):
    seen = {}

    class FakeTrainer:  # the trainer itself is tested in tests/train
        def __init__(self, cfg):
            seen["cfg"] = cfg

        def run(self):
            return {}

        def close(self):
            pass

    monkeypatch.setattr(train, "Trainer", FakeTrainer)
    assert train.main(["r1jax-train", f"--config={DEMO}", "--config.algo.clip_c=3.0",
                       "--config.algo.min_train_prompts=None",
                       "--config.rewards.functions[0].weight=2.0"]) == 0
    cfg = seen["cfg"]
    assert (cfg.algo.clip_c, cfg.algo.min_train_prompts) == (3.0, None)
    assert cfg.rewards.functions[0].weight == 2.0


def test_r1jax_train_command_parses_a_field_whose_default_is_none():
    # A value that parses but fails validation: the command stops at start-up, before any
    # model is built, with the validation message (not "NoneType is not supported").
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "r1jax-train"),
                           f"--config={DEMO}", "--config.algo.clip_c=0.5"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "r1jax-train: config key 'config.algo.clip_c': must be > 1 or None" in proc.stderr
