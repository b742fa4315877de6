"""Loading a policy to evaluate: a Hugging Face directory or an r1jax run checkpoint.

A checkpoint `RUN_DIR/checkpoints/STEP/` (r1jax/checkpoint.py) holds the train state
`{"params", "opt_state", "step"}` and the run config (item "meta"). The model is rebuilt from
that config through r1jax.builder without allocating (`nnx.eval_shape`), and only the
parameters are read back (an orbax partial restore: the optimizer state, twice the size of
the parameters, never leaves the disk), straight into the evaluation mesh's shardings.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import jax

from r1jax import builder
from r1jax.config import ModelConfig, RunConfig, from_dict
from r1jax.models import Decoder, load_hf, load_tokenizer, model_config_from_hf
from r1jax.models.decoder import abstract_params, param_shardings
from r1jax.models.hf_io import read_hf_config
from r1jax.models.tokenizer import stop_token_ids as tokenizer_stop_ids
from r1jax.sharding import Sharding, merge_rules

class PolicyError(ValueError):
    """A policy that cannot be evaluated: tokenizer and model disagree, saved parameters do
    not fit the run's model, no way to stop a completion."""


@dataclasses.dataclass
class Policy:
    """A model to evaluate with its tokenizer.

    Attributes:
      model: the Decoder (params placed on the evaluation mesh).
      tokenizer: its transformers tokenizer.
      source: where it came from (the HF directory, or the checkpoint step directory).
      stop_token_ids: tokens that end a completion.
      step: the training step of a checkpoint (None for HF directories).
      run_config: the training run's config (checkpoints only).
    """

    model: Decoder
    tokenizer: Any
    source: str
    stop_token_ids: list
    step: Optional[int] = None
    run_config: Optional[RunConfig] = None


def stop_token_ids(tokenizer: Any, model_dir: Optional[str] = None) -> list[int]:
    """`r1jax.models.tokenizer.stop_token_ids`, the rule the trainer uses too.

    Raises:
      PolicyError: no token could ever end a completion.
    """
    try:
        return tokenizer_stop_ids(tokenizer, model_dir)
    except ValueError as e:
        raise PolicyError(str(e)) from None


def _check_vocab(tokenizer: Any, cfg: ModelConfig, what: str) -> None:
    if len(tokenizer) > cfg.vocab_size:
        raise PolicyError(f"the tokenizer has {len(tokenizer)} tokens, more than the vocab_size "
                         f"{cfg.vocab_size} of {what}: pass the model's own tokenizer")


def load_hf_policy(model_dir: str, *, tokenizer_dir: Optional[str] = None,
                   sharding: Optional[Sharding] = None, dtype: str = "float32",
                   compute_dtype: Optional[str] = None) -> Policy:
    """A policy from a local Hugging Face directory (tokenizer from it or `tokenizer_dir`).

    Raises:
      FileNotFoundError: the directory, its config.json or the tokenizer files are missing.
    """
    tokenizer = load_tokenizer(tokenizer_dir or model_dir)
    model = load_hf(model_dir, dtype=dtype, compute_dtype=compute_dtype, mesh=sharding)
    _check_vocab(tokenizer, model.config, model_dir)
    return Policy(model, tokenizer, os.path.abspath(model_dir),
                  stop_token_ids(tokenizer, model_dir))


# ----------------------------------------------------------------------------------------
# r1jax checkpoints.


def _steps(checkpoints_dir: str) -> list[int]:
    """Complete checkpoint steps (orbax's temporary directories have non-numeric names)."""
    return sorted(int(name) for name in os.listdir(checkpoints_dir) if name.isdigit()
                  and os.path.isdir(os.path.join(checkpoints_dir, name, "state")))


def resolve_checkpoint(path: str) -> tuple[str, str, int]:
    """(run_dir, step_dir, step) of a run directory (latest step), its `checkpoints/`
    folder (latest step) or one `checkpoints/STEP` directory.

    Raises:
      FileNotFoundError: the path does not exist, or holds no checkpoint.
    """
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint path does not exist: {path}")
    if os.path.isdir(os.path.join(path, "state")) and os.path.basename(path).isdigit():
        return os.path.dirname(os.path.dirname(path)), path, int(os.path.basename(path))
    root = os.path.join(path, "checkpoints")
    if not os.path.isdir(root):
        root = path
    steps = _steps(root)
    if not steps:
        raise FileNotFoundError(f"no r1jax checkpoint in {path} (expected RUN_DIR, "
                                "RUN_DIR/checkpoints or RUN_DIR/checkpoints/STEP holding "
                                "state/ and meta/)")
    return os.path.dirname(root), os.path.join(root, str(steps[-1])), steps[-1]


def read_run_config(step_dir: str) -> RunConfig:
    """The run config saved in a checkpoint's "meta" item.

    Raises:
      FileNotFoundError: the checkpoint has no meta item or it holds no config.
    """
    import orbax.checkpoint as ocp

    meta_dir = os.path.join(step_dir, "meta")
    if not os.path.isdir(meta_dir):
        raise FileNotFoundError(f"checkpoint {step_dir} has no meta/ item (the run config)")
    meta = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(meta_dir)
    if not isinstance(meta, dict) or "config" not in meta:
        raise FileNotFoundError(f"checkpoint {step_dir}: meta holds no run config")
    return from_dict(RunConfig, meta["config"])


def _existing(path: str, run_dir: str) -> str:
    """A path from the run config: as saved, or relative to the run directory's parent."""
    if os.path.exists(path) or os.path.isabs(path):
        return path
    beside = os.path.join(os.path.dirname(run_dir), path)
    return beside if os.path.exists(beside) else path


def _run_tokenizer(cfg: RunConfig, run_dir: str, tokenizer_dir: Optional[str]) -> Any:
    if tokenizer_dir is not None:
        return load_tokenizer(tokenizer_dir)
    saved = os.path.join(run_dir, "tokenizer")  # the trainer saves character tokenizers here
    if cfg.model.char_vocab and os.path.isdir(saved):
        return load_tokenizer(saved)
    if cfg.model.char_vocab:
        return builder.build_tokenizer(cfg.model)
    where = cfg.model.tokenizer or cfg.model.path
    try:
        return load_tokenizer(_existing(where, run_dir))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}; the run's tokenizer moved? pass --tokenizer") from None


def _run_model_config(spec: Any, run_dir: str, sharding: Sharding) -> ModelConfig:
    """The run's ModelConfig; `spec.arch` must hold its vocab_size."""
    spec = dataclasses.replace(spec, remat="none")  # rematerialization only matters for grads
    if spec.path is not None:  # only config.json is read, never the original weights
        return model_config_from_hf(read_hf_config(_existing(spec.path, run_dir)),
                                    **spec.numerics())
    from flax import nnx
    # preset / arch models: the builder's own config logic, traced without allocating.
    return nnx.eval_shape(lambda: builder.build_policy(spec, sharding)).config


def load_checkpoint_policy(path: str, *, tokenizer_dir: Optional[str] = None,
                           sharding: Sharding, dtype: Optional[str] = None,
                           compute_dtype: Optional[str] = None) -> Policy:
    """A policy from an r1jax checkpoint: the run's model with the saved parameters.

    Args:
      path: RUN_DIR, RUN_DIR/checkpoints or RUN_DIR/checkpoints/STEP.
      tokenizer_dir: overrides the run's tokenizer (needed when it moved).
      sharding: the evaluation mesh (its rules are replaced by the run's overrides).
      dtype, compute_dtype: parameter / compute dtypes (default: the run's).

    Raises:
      FileNotFoundError: no checkpoint, run config, model config.json or tokenizer.
      ConfigError: the saved run config no longer validates.
      PolicyError: the saved parameters do not fit the rebuilt model, or the tokenizer has
        more tokens than the model.
    """
    run_dir, step_dir, step = resolve_checkpoint(path)
    cfg = read_run_config(step_dir)
    state_dir = os.path.join(step_dir, "state")
    saved = saved_param_shapes(state_dir)
    tokenizer = _run_tokenizer(cfg, run_dir, tokenizer_dir)
    spec = dataclasses.replace(cfg.model, param_dtype=dtype or cfg.model.param_dtype,
                               dtype=compute_dtype or dtype or cfg.model.dtype)
    if spec.arch is not None and "vocab_size" not in spec.arch:
        # The trainer sized it from its tokenizer, which --tokenizer may have replaced.
        spec = dataclasses.replace(spec, arch=dict(spec.arch,
                                                   vocab_size=saved["['embed']"][0]))
    sharding = Sharding(sharding.mesh, merge_rules(cfg.mesh.rules))
    model_cfg = _run_model_config(spec, run_dir, sharding)
    _check_shapes(saved, model_cfg, state_dir)
    _check_vocab(tokenizer, model_cfg, f"the model of {step_dir}")
    params = restore_params(state_dir, model_cfg, sharding)
    model = Decoder(model_cfg, params=params, sharding=sharding)
    return Policy(model, tokenizer, step_dir, stop_token_ids(tokenizer), step, cfg)


def saved_param_shapes(state_dir: str) -> dict:
    """Parameter path (as `jax.tree_util.keystr` writes it) -> shape, from orbax metadata.

    Raises:
      PolicyError: the state holds no parameters.
    """
    import orbax.checkpoint as ocp
    from etils import epath

    tree = ocp.PyTreeCheckpointHandler().metadata(epath.Path(state_dir)).tree
    if not isinstance(tree, dict) or "params" not in tree:
        raise PolicyError(f"{state_dir}: no 'params' in the saved train state")
    leaves = jax.tree_util.tree_flatten_with_path(tree["params"])[0]
    return {jax.tree_util.keystr(k): tuple(v.shape) for k, v in leaves}


def _check_shapes(saved: dict, cfg: ModelConfig, state_dir: str) -> None:
    leaves = jax.tree_util.tree_flatten_with_path(abstract_params(cfg))[0]
    wanted = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in leaves}
    for name in sorted(set(saved) | set(wanted)):
        if saved.get(name) != wanted.get(name):
            raise PolicyError(f"{state_dir}: parameter {name} is saved with shape "
                              f"{saved.get(name)} but the run's model config gives "
                              f"{wanted.get(name)}")


def restore_params(state_dir: str, cfg: ModelConfig, sharding: Sharding) -> Any:
    """The "params" of a saved train state, cast to `cfg.param_dtype`, in `sharding`.

    Raises:
      PolicyError: the saved parameters do not match the model (names or shapes).
    """
    import orbax.checkpoint as ocp

    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, jax.numpy.dtype(cfg.param_dtype),
                                          sharding=s),
        abstract_params(cfg), param_shardings(cfg, sharding))
    item = {"params": target}
    try:
        out = ocp.PyTreeCheckpointer().restore(state_dir, args=ocp.args.PyTreeRestore(
            item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
            partial_restore=True))
    except (ValueError, KeyError) as e:
        raise PolicyError(f"{state_dir}: the saved parameters do not match the run's model "
                         f"config: {e}") from e
    return out["params"]


# ----------------------------------------------------------------------------------------
# Command-line flags shared by the tools that load a policy (r1jax-eval,
# r1jax-rejection-sample).


def add_policy_arguments(parser: Any) -> None:
    """--model / --checkpoint / --tokenizer / --dtype / --compute_dtype / --mesh."""
    src = parser.add_argument_group("policy (exactly one of --model / --checkpoint)")
    src.add_argument("--model", help="local Hugging Face model directory")
    src.add_argument("--checkpoint", help="r1jax RUN_DIR, RUN_DIR/checkpoints (latest step) "
                     "or RUN_DIR/checkpoints/STEP")
    src.add_argument("--tokenizer", help="tokenizer directory (default: the model's)")
    src.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                     help="parameter dtype (default: float32 for --model, the run's for "
                     "--checkpoint)")
    src.add_argument("--compute_dtype", choices=("float32", "bfloat16", "float16"),
                     help="activation dtype (default: --dtype)")
    src.add_argument("--mesh", default="1,-1,1", help="data,fsdp,tensor mesh sizes over the "
                     "local devices, -1: the rest (default %(default)s)")


def check_policy_arguments(a: Any) -> None:
    """Raises ValueError / FileNotFoundError for the policy flags before anything loads."""
    if (a.model is None) == (a.checkpoint is None):
        raise PolicyError("pass exactly one of --model=HF_DIR or --checkpoint=RUN_DIR")
    for path, flag in ((a.model, "--model"), (a.checkpoint, "--checkpoint"),
                       (a.tokenizer, "--tokenizer"), (getattr(a, "data_dir", None),
                                                      "--data_dir")):
        if path is not None and not os.path.isdir(path):
            raise FileNotFoundError(f"{flag}: directory does not exist: {path}")


def mesh_from_flag(spec: str) -> Sharding:
    """The Sharding of a --mesh flag "data,fsdp,tensor" (-1: the rest of the devices).

    Raises:
      PolicyError: not three integers, or sizes that do not fit the devices.
    """
    from r1jax.sharding import make_mesh
    try:
        sizes = [int(x) for x in spec.split(",")]
    except ValueError:
        sizes = []
    if len(sizes) != 3:
        raise PolicyError(f"--mesh must be three comma-separated sizes data,fsdp,tensor; "
                          f"got {spec!r}")
    devices = jax.devices()
    if -1 not in sizes and 0 < sizes[0] * sizes[1] * sizes[2] < len(devices):
        if jax.process_count() > 1:
            raise PolicyError(f"--mesh={spec} covers {sizes[0] * sizes[1] * sizes[2]} of the "
                              f"job's {len(devices)} devices; with several processes the "
                              "mesh spans every device (use -1 for the rest)")
        devices = devices[:sizes[0] * sizes[1] * sizes[2]]  # a mesh on fewer devices
    try:
        return Sharding(make_mesh(*sizes, devices=devices))
    except ValueError as e:
        raise PolicyError(f"--mesh={spec}: {e}") from None


def load_policy(a: Any, sharding: Sharding) -> Policy:
    """The policy the --model / --checkpoint flags name."""
    if a.model is not None:
        return load_hf_policy(a.model, tokenizer_dir=a.tokenizer, sharding=sharding,
                              dtype=a.dtype or "float32", compute_dtype=a.compute_dtype)
    return load_checkpoint_policy(a.checkpoint, tokenizer_dir=a.tokenizer, sharding=sharding,
                                  dtype=a.dtype, compute_dtype=a.compute_dtype)
