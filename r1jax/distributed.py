"""The multi-process side of a job: start-up, global facts on every host, fail-fast.

Every process of a job runs the same program (JAX's multi-controller model). The rule this
module serves: every decision a process takes on the host (batch shapes, loop exits, counts,
stop and skip decisions) comes from values every process holds identically: a device result
gathered to all hosts (`to_host`), a flag reduced over all processes (`any_process`), or the
config, whose hash is compared at start-up (`check_same_config`).

    initialize(cfg.distributed)          # before anything touches a JAX backend
    check_same_config(to_dict(cfg))
    check_shared_dir(cfg.train.run_dir)

One process (the default everywhere) makes every function here a no-op or a local read.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import hashlib
import io
import itertools
import json
import logging
import os
import sys
import threading
import time
import uuid
from typing import Any, Optional

import jax
import numpy as np

from r1jax.config import ConfigError, DistributedConfig

log = logging.getLogger("r1jax.distributed")


def cluster_detected(env: Optional[dict] = None) -> Optional[str]:
    """The multi-host environment JAX can join without a coordinator address, if any.

    "slurm": a SLURM job step of more than one task; "tpu": a Cloud TPU slice of several
    hosts (TPU_WORKER_HOSTNAMES lists more than one). None: one process.
    """
    env = os.environ if env is None else env
    if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return "slurm"
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if len(hosts) > 1:
        return "tpu"
    return None


def initialize(cfg: DistributedConfig) -> bool:
    """Joins the job's other processes (`jax.distributed.initialize`) when there are any.

    With `coordinator_address` set, the given address / count / id (the ones left at 0 / -1
    are detected by JAX); else, with `auto`, when `cluster_detected()` names an environment.
    The CPU backend's collectives run over gloo (TCP), so the same program runs as several
    local processes. Must run before any JAX backend is used. Returns whether
    this is a multi-process job.
    """
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    explicit = bool(cfg.coordinator_address)
    if not explicit and not (cfg.auto and cluster_detected()):
        return False
    # The CPU backend's cross-process collectives (the only ones of a CPU job; harmless on
    # TPU / GPU, whose collectives run on their interconnect).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    local = [int(x) for x in cfg.local_device_ids.split(",")] if cfg.local_device_ids \
        else None
    try:
        jax.distributed.initialize(
            coordinator_address=cfg.coordinator_address or None,
            num_processes=cfg.num_processes or None,
            process_id=None if cfg.process_id < 0 else cfg.process_id,
            local_device_ids=local,
            initialization_timeout=cfg.initialization_timeout_s,
            heartbeat_timeout_seconds=cfg.heartbeat_timeout_s,
            shutdown_timeout_seconds=cfg.shutdown_timeout_s)
    except Exception as e:  # noqa: BLE001 - any start-up failure gets the same context
        raise RuntimeError(
            f"jax.distributed.initialize failed (coordinator "
            f"{cfg.coordinator_address or 'auto-detected'}, processes "
            f"{cfg.num_processes or 'auto'}, this process {cfg.process_id}): {e}. Every "
            "process must start within distributed.initialization_timeout_s "
            f"({cfg.initialization_timeout_s} s) and reach the coordinator's port") from e
    log.info("process %d of %d: %d local / %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())
    if jax.process_count() > 1 and jax.default_backend() == "cpu":
        _no_persistent_cache_on_cpu()
    return jax.process_count() > 1


def _no_persistent_cache_on_cpu() -> None:
    """Turns JAX's persistent compile cache off for a multi-process CPU job.

    JAX writes cache entries from process 0 only, and on CPU each process's key names its
    own devices, so process 0 would load every program from an earlier run while its peers
    compile theirs afresh. A 2-process `r1jax-dpo` job started that way from a warm cache
    (tests/sft/test_sft_multiprocess.py) deadlocked in its first update: both processes
    waited on the update's gloo collectives, reproducibly, while the same job from an empty
    cache (both processes compiling) passes. Every process compiles instead."""
    if jax.config.jax_enable_compilation_cache and jax.config.jax_compilation_cache_dir:
        log.info("multi-process CPU job: the persistent compile cache (%s) is not used",
                 jax.config.jax_compilation_cache_dir)
    jax.config.update("jax_enable_compilation_cache", False)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--distributed.FIELD` flags for the command-line tools that take flags instead of a
    config file (r1jax-eval, r1jax-rejection-sample): the `distributed` config section's
    fields, with its names and defaults (`config_from_args` reads them back)."""
    group = parser.add_argument_group("multi-process job (the `distributed` config fields)")
    for field in dataclasses.fields(DistributedConfig):
        default = field.default
        kind = _parse_bool if isinstance(default, bool) else type(default)
        group.add_argument(f"--distributed.{field.name}", dest=f"distributed.{field.name}",
                           type=kind, default=default, metavar=type(default).__name__.upper(),
                           help=f"default {default!r}")


def _parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def config_from_args(args: argparse.Namespace) -> DistributedConfig:
    """The DistributedConfig of `add_arguments`' flags, validated (ConfigError)."""
    cfg = DistributedConfig(**{f.name: getattr(args, f"distributed.{f.name}")
                               for f in dataclasses.fields(DistributedConfig)})
    cfg.validate("distributed")
    return cfg


def flags_config(args: argparse.Namespace) -> dict:
    """A tool's parsed flags as the dict `check_same_config` compares (the
    `--distributed.*` flags, which legitimately differ between processes, left out)."""
    return {"flags": {k: v for k, v in sorted(vars(args).items())
                      if not k.startswith("distributed.")}}


# Exit status of a process that stops because another process of its job was lost.
EXIT_PROCESS_LOST = 3


def _lost_processes() -> Optional[list]:
    """The processes the coordination service no longer counts as alive (None: it did not
    answer)."""
    from jax._src import distributed as jax_distributed
    ids = list(range(jax.process_count()))
    try:
        live = jax_distributed.global_state.client.get_live_nodes(ids)
    except Exception:  # noqa: BLE001 - the service is gone or in error: no answer
        return None
    return [i for i in ids if i not in live]


def _exit_lost(lost: list, cause: str = "") -> None:
    """Says which processes were lost and ends this one with EXIT_PROCESS_LOST, skipping
    JAX's shutdown barrier (which would wait for the lost ones)."""
    who = (f"lost process{'es' if len(lost) > 1 else ''} {', '.join(map(str, lost))} of "
           f"{jax.process_count()}" if lost else "lost another process of the job")
    sys.stderr.write(f"r1jax: {who} (killed, out of memory, or its host is down){cause}; "
                     f"process {jax.process_index()} stops. Restart the job to resume from "
                     "the last complete checkpoint.\n")
    sys.stderr.flush()
    os._exit(EXIT_PROCESS_LOST)


def watch_processes(poll_s: float = 1.0) -> None:
    """Fails fast when another process of the job is lost.

    A daemon thread asks the coordination service every `poll_s` seconds which processes
    are alive; when one is missing (killed, out of memory, its host down: the service drops
    it when its connection closes, at the latest after distributed.heartbeat_timeout_s
    without a heartbeat) this process prints which one and exits with EXIT_PROCESS_LOST,
    instead of waiting in a collective that can no longer complete. Restarting the job
    resumes from the last complete checkpoint. (When the service declares the loss itself
    first, JAX ends the process with its own message, "Task N heartbeat timeout".)
    """
    if not multi_process():
        return
    done = threading.Event()

    def run():
        while not done.wait(poll_s):
            lost = _lost_processes()
            if lost and not done.is_set():
                _exit_lost(lost)

    threading.Thread(target=run, name="r1jax-watch-processes", daemon=True).start()
    atexit.register(done.set)


def exit_if_peer_lost(error: BaseException, wait_s: float = 10.0) -> None:
    """Called with an error that ends a multi-process job: when it is a collective failing
    because another process is gone (its connection closed), says which process and exits
    with EXIT_PROCESS_LOST at once, instead of a traceback and a shutdown barrier that waits
    for the lost process until the heartbeat timeout. Returns for any other error."""
    if not multi_process() or not isinstance(error, jax.errors.JaxRuntimeError):
        return
    peer_gone = any(s in str(error) for s in ("Connection closed", "Connection reset",
                                              "Broken pipe", "heartbeat"))
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        lost = _lost_processes()
        if lost:
            _exit_lost(lost, f"; a collective failed: {str(error)[:300]}")
        time.sleep(0.25)
    if peer_gone:
        _exit_lost([], f"; a collective failed: {str(error)[:300]}")


def multi_process() -> bool:
    return jax.process_count() > 1


def is_writer() -> bool:
    """Whether this process writes the job's files and console output (process 0)."""
    return jax.process_index() == 0


# How many `gather` calls this process has made: every process makes the same calls in the
# same order, so the count names the same gather on all of them.
_GATHERS = itertools.count()
# A gather waits this long for the other processes' parts. A lost process ends the job long
# before (`watch_processes`); a live one may be busy for a long time first (process 0
# writing an export while the others wait at the next gather).
GATHER_TIMEOUT_S = 24 * 3600


def _gather_key(seq: int, process: int) -> str:
    return f"r1jax/gather/{seq}/{process}"


def gather(values: np.ndarray) -> np.ndarray:
    """[P, *values.shape]: each process's host array, on every process (same order).

    Every process must call it in the same order with an array of the same shape and dtype
    (otherwise a RuntimeError on every process lists each process's shape and dtype). The parts travel through the
    coordination service's key-value store, not through a device program: a gather of a few
    host values (rewards, stop flags) never queues behind the programs running on the
    devices, such as the rollout engine's decode chunk that the host overlaps with scoring.
    """
    values = np.ascontiguousarray(values)
    if not multi_process():
        return values[None]
    from jax._src import distributed as jax_distributed
    client = jax_distributed.global_state.client
    seq, me, count = next(_GATHERS), jax.process_index(), jax.process_count()
    buf = io.BytesIO()
    np.save(buf, values, allow_pickle=False)
    client.key_value_set_bytes(_gather_key(seq, me), buf.getvalue())
    parts = [values if p == me else np.load(io.BytesIO(client.blocking_key_value_get_bytes(
        _gather_key(seq, p), GATHER_TIMEOUT_S * 1000)), allow_pickle=False)
        for p in range(count)]
    # Every process has set its part of this gather, so each has read all parts of the
    # previous one: this process's previous part is no longer needed.
    if seq:
        client.key_value_delete(_gather_key(seq - 1, me))
    if any(p.shape != values.shape or p.dtype != values.dtype for p in parts):
        raise RuntimeError(
            f"gather {seq} got parts of different shapes / dtypes "
            f"{[(p.shape, str(p.dtype)) for p in parts]} from processes 0..{count - 1}: the "
            "processes took different decisions before it (a bug; every process must make "
            "the same gathers in the same order)")
    return np.stack(parts)


def to_host(tree: Any) -> Any:
    """`jax.device_get` for arrays that may span processes: every process receives the whole
    global value (the same on all), so decisions taken from it agree."""
    leaves, treedef = jax.tree.flatten(tree)
    spread = [i for i, x in enumerate(leaves) if isinstance(x, jax.Array)
              and not x.is_fully_addressable and not x.is_fully_replicated]
    if spread:
        # One program replicates them all: one dispatch and one wait for the devices, not
        # one per array.
        replicated = jax.jit(lambda xs: xs, out_shardings=[
            _replicated(leaves[i].sharding) for i in spread])([leaves[i] for i in spread])
        for i, x in zip(spread, replicated):
            leaves[i] = x
    out = [np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array)
           and not x.is_fully_addressable else np.asarray(jax.device_get(x)) for x in leaves]
    return jax.tree.unflatten(treedef, out)


def _replicated(sharding: jax.sharding.Sharding) -> jax.sharding.Sharding:
    if isinstance(sharding, jax.sharding.NamedSharding):
        return sharding.update(spec=jax.sharding.PartitionSpec())
    return jax.sharding.NamedSharding(
        jax.sharding.Mesh(np.asarray(sharding._device_assignment), ("all",)),
        jax.sharding.PartitionSpec())


def any_process(flag: bool) -> bool:
    """Whether `flag` is set on any process (a stop request seen by one host stops all)."""
    if not multi_process():
        return bool(flag)
    return bool(gather(np.asarray([int(bool(flag))], np.int32)).any())


def barrier(name: str) -> None:
    if multi_process():
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def config_hash(config: dict) -> str:
    """A stable hash of a run config (its `to_dict` form), the `distributed` section aside
    (process ids legitimately differ)."""
    body = {k: v for k, v in config.items() if k != "distributed"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def check_same_config(config: dict) -> None:
    """Refuses to start when the processes were given different configs.

    Raises:
      ConfigError: naming the processes whose config differs from process 0's.
    """
    if not multi_process():
        return
    digest = np.frombuffer(bytes.fromhex(config_hash(config)), np.uint8)
    all_digests = gather(digest)
    differ = [p for p in range(len(all_digests)) if not np.array_equal(all_digests[p],
                                                                         all_digests[0])]
    if differ:
        raise ConfigError(f"processes {differ} were started with a config different from "
                          "process 0's (every process must get the same config file and "
                          "flags, apart from distributed.*)")


def prepare_run_dir(config: dict, run_dir: str) -> str:
    """The run directory (absolute, created) of a job whose config is `config` (its
    `to_dict` form), after the start-up checks every process makes: the same config on all
    processes, and the directory shared by all of them."""
    run_dir = os.path.abspath(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    check_same_config(config)
    check_shared_dir(run_dir)
    return run_dir


def check_shared_dir(path: str, name: str = "train.run_dir") -> None:
    """Refuses to start when `path` (the config key or flag `name`) is not the same
    directory on every process: process 0 writes a marker there and every process must see
    it.

    Raises:
      ConfigError: naming the processes that do not see process 0's marker.
    """
    if not multi_process():
        return
    os.makedirs(path, exist_ok=True)
    token = np.frombuffer(uuid.uuid4().bytes, np.uint8)
    token = gather(token)[0]  # process 0's
    marker = os.path.join(path, f".r1jax_shared_{token.tobytes().hex()}")
    if jax.process_index() == 0:
        with open(marker, "w") as f:
            f.write("")
    barrier("r1jax_shared_dir_written")
    seen = gather(np.asarray([int(os.path.exists(marker))], np.int32))[:, 0]
    barrier("r1jax_shared_dir_checked")
    if jax.process_index() == 0:
        os.remove(marker)
    missing = [p for p in range(len(seen)) if not seen[p]]
    if missing:
        raise ConfigError(f"{name} {path!r} is not shared: processes {missing} do not "
                          "see what process 0 writes there (use a shared filesystem or a "
                          "bucket path every host mounts)")


def score_shared(pool: Any, completions: list, examples: list, lengths: list) -> Any:
    """`pool.score` of B completions, each process scoring its share (rows p, p + P, ...)
    and every process receiving all B results: rewards, per-function values, failure flags
    and counts (the failure examples stay in the log of the process that met them).

    Every process then holds the same rewards, so the advantages and dynamic-sampling
    choices made from them agree even where a reward is not deterministic (a sandboxed
    program's time limit).
    """
    if not multi_process():
        return pool.score(completions, examples, lengths)
    from r1jax.rewards import model_reward
    if isinstance(pool, model_reward.PoolWithModelReward):
        # The reward model is one device program over the mesh: every process runs it on
        # all B rows (the same global input); the rule-based rewards are shared out.
        result = score_shared(pool.pool, completions, examples, lengths)
        name, values = pool.model_term(completions, examples)
        return model_reward.add_to_result(result, values, pool.weight, name)
    from r1jax.rewards.pool import RewardFailures, RewardResult
    count, me, n = jax.process_count(), jax.process_index(), len(completions)
    mine = list(range(me, n, count))
    local = pool.score([completions[i] for i in mine], [examples[i] for i in mine],
                       [lengths[i] for i in mine])
    names = sorted(local.per_function)
    # One gather: this process's rows (total, failed, each function's value), then a last
    # row whose first 3 entries are its failure counts (small integers, exact in float64).
    width, share = max(3, 2 + len(names)), -(-n // count)
    table = np.full((share + 1, width), np.nan)
    table[:len(mine), 0] = local.total
    table[:len(mine), 1] = local.failed
    for j, name in enumerate(names):
        table[:len(mine), 2 + j] = local.per_function[name]
    f = local.failures
    table[share, :3] = (f.timeouts, f.crashes, f.exceptions)
    tables = gather(table)  # [P, ceil(B / P) + 1, width]
    counts = tables[:, share, :3].sum(0)
    rows = np.stack([tables[i % count, i // count] for i in range(n)]) if n \
        else np.zeros((0, width))
    return RewardResult(total=rows[:, 0], failed=rows[:, 1].astype(bool),
                        per_function={name: rows[:, 2 + j] for j, name in enumerate(names)},
                        failures=RewardFailures(int(counts[0]), int(counts[1]),
                                                int(counts[2]), list(f.examples)))
