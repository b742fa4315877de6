"""r1jax.distributed: environment detection, the config check at start-up, config errors."""

import os
import subprocess
import sys

import pytest

from r1jax.config import ConfigError, load_config, to_dict
from r1jax.distributed import cluster_detected, config_hash
from tests.train.test_multiprocess import ROOT, TRAIN, free_port
from tests.xla_env import cpu_xla_flags


@pytest.mark.parametrize("env,expected", [
    ({}, None),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, None),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, "slurm"),
    ({"SLURM_NTASKS": "4"}, None),  # not inside a job
    ({"TPU_WORKER_HOSTNAMES": "10.0.0.2"}, None),  # a single-host TPU VM
    ({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3"}, "tpu"),
])
def test_cluster_detection(env, expected):
    assert cluster_detected(env) == expected


def test_config_hash_ignores_only_the_distributed_section():
    spec = os.path.join(ROOT, "configs", "demo_cpu.py") + ":tiny"
    base = to_dict(load_config(spec))
    other_id = to_dict(load_config(spec, ["distributed.process_id=1",
                                          "distributed.num_processes=2"]))
    other_seed = to_dict(load_config(spec, ["train.seed=1"]))
    assert config_hash(base) == config_hash(other_id)
    assert config_hash(base) != config_hash(other_seed)


@pytest.mark.parametrize("overrides,key", [
    (["distributed.num_processes=2", "distributed.process_id=2"], "process_id"),
    (["distributed.coordinator_address=localhost"], "coordinator_address"),
    (["distributed.local_device_ids=0;1"], "local_device_ids"),
    (["distributed.heartbeat_timeout_s=0"], "heartbeat_timeout_s"),
])
def test_bad_distributed_fields_are_named(overrides, key):
    with pytest.raises(ConfigError, match=f"distributed.{key}"):
        load_config(os.path.join(ROOT, "configs", "demo_cpu.py") + ":tiny", overrides)


def run_processes(commands: list[list[str]], timeout: float, **env: str) -> list:
    """Runs the commands at once (one CPU device each, `env` added); returns (process,
    stdout, stderr) of each, killing any still running after `timeout` seconds."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=cpu_xla_flags(1), **env)
    procs = [subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for c in commands]
    try:
        results = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [(p, out, err) for p, (out, err) in zip(procs, results)]


def test_processes_started_with_different_configs_refuse_to_start(tmp_path):
    port = free_port()
    results = run_processes([
        [TRAIN, "--config=configs/demo_cpu.py:tiny", f"--config.train.run_dir={tmp_path}",
         f"--config.train.seed={i}",  # the mistake: process 1 got another seed
         f"--config.distributed.coordinator_address=127.0.0.1:{port}",
         "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}",
         "--config.distributed.initialization_timeout_s=60"] for i in range(2)], 300)
    for p, _, err in results:
        assert p.returncode == 2, err[-2000:]
        assert "processes [1] were started with a config different from process 0's" in err


GATHER_JOB = """
import sys, numpy as np
from r1jax import distributed
from r1jax.config import DistributedConfig
port, i = sys.argv[1], int(sys.argv[2])
distributed.initialize(DistributedConfig(
    coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=i,
    initialization_timeout_s=60))
for k in range(3):
    print("gather", k, distributed.gather(np.array([10 * k + i, -i], np.int64)).tolist())
print("any", distributed.any_process(i == 1), distributed.any_process(False))
try:
    distributed.gather(np.zeros((i + 1,), np.float32))
except RuntimeError as e:
    print("refused:", e)
"""


def test_gather_returns_each_calls_parts_in_process_order_and_refuses_mismatches():
    """`gather` (host values through the coordination service): each call returns that
    call's parts, process 0's first, on every process; a call whose parts differ in shape
    (processes out of step) is refused on every process."""
    port = free_port()
    results = run_processes([[sys.executable, "-c", GATHER_JOB, str(port), str(i)]
                             for i in range(2)], 240)
    for p, out, err in results:
        assert p.returncode == 0, err[-2000:]
        lines = out.strip().splitlines()
        assert lines[:4] == ["gather 0 [[0, 0], [1, -1]]", "gather 1 [[10, 0], [11, -1]]",
                             "gather 2 [[20, 0], [21, -1]]", "any True False"], out
        assert lines[4].startswith("refused: gather 5 got parts of different shapes"), out
        assert "[((1,), 'float32'), ((2,), 'float32')]" in lines[4], out


SCORE_JOB = """
import sys, numpy as np
from r1jax import distributed
from r1jax.config import DistributedConfig
from r1jax.rewards.pool import RewardFailures, RewardResult
port, i = sys.argv[1], int(sys.argv[2])
distributed.initialize(DistributedConfig(
    coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=i,
    initialization_timeout_s=60))

class Pool:  # reward = the completion's length; "bad" completions fail (one of each kind)
    def score(self, completions, examples, lengths):
        bad = [c.startswith("bad") for c in completions]
        acc = np.array([0.0 if b else float(n) for b, n in zip(bad, lengths)])
        kinds = [c for c in completions if c.startswith("bad")]
        return RewardResult(total=2 * acc, per_function={"acc": acc}, failed=np.array(bad),
                            failures=RewardFailures(kinds.count("bad-timeout"),
                                                    kinds.count("bad-crash"),
                                                    kinds.count("bad-raise"), kinds))

texts = ["a", "bad-timeout", "ccc", "bad-crash", "e", "bad-raise", "ggggggg"]
r = distributed.score_shared(Pool(), texts, [{}] * 7, [len(t) for t in texts])
print(r.total.tolist(), r.per_function["acc"].tolist(), r.failed.tolist(),
      (r.failures.timeouts, r.failures.crashes, r.failures.exceptions), r.failures.examples)
"""


def test_score_shared_splits_rows_between_processes_and_gives_every_process_all_results():
    """Each process scores rows p, p + 2, ... of 7; both receive every row's total, function
    value and failure flag in the original order, and the failure counts summed over the
    processes (the failure examples stay with the process that met them)."""
    port = free_port()
    results = run_processes([[sys.executable, "-c", SCORE_JOB, str(port), str(i)]
                             for i in range(2)], 240)
    lines = []
    for p, out, err in results:
        assert p.returncode == 0, err[-2000:]
        lines.append(out.strip().splitlines()[-1])
    common = ("[2.0, 0.0, 6.0, 0.0, 2.0, 0.0, 14.0] [1.0, 0.0, 3.0, 0.0, 1.0, 0.0, 7.0] "
              "[False, True, False, True, False, True, False] (1, 1, 1)")
    # Process 0 scored rows 0, 2, 4, 6 (no failure), process 1 rows 1, 3, 5.
    assert lines == [f"{common} []",
                     f"{common} ['bad-timeout', 'bad-crash', 'bad-raise']"]


JOB = """
import sys, jax, jax.numpy as jnp, numpy as np
from r1jax import distributed
from r1jax.config import DistributedConfig
port, n, i = sys.argv[1:4]
distributed.initialize(DistributedConfig(
    coordinator_address=f"127.0.0.1:{port}" if int(n) > 1 else "", num_processes=int(n),
    process_id=int(i), initialization_timeout_s=60))
x = jax.make_array_from_process_local_data(
    jax.sharding.NamedSharding(jax.make_mesh((jax.device_count(),), ("d",)),
                               jax.sharding.PartitionSpec("d")), np.ones((1,), np.float32))
print("sum", float(jax.jit(lambda a: a.sum() * 3)(x)), jax.config.jax_enable_compilation_cache)
"""


def test_a_multi_process_cpu_job_keeps_out_of_the_persistent_compile_cache(tmp_path):
    """On CPU only process 0 writes the cache and each process's keys name its own devices:
    a job would start with process 0 loading what the others compile (a pairing seen to
    deadlock in gloo collectives). One process still uses the cache (the control)."""
    def job(n: int, cache: str) -> list[str]:
        port = free_port()
        results = run_processes(
            [[sys.executable, "-c", JOB, str(port), str(n), str(i)] for i in range(n)], 240,
            JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
        for p, _, err in results:
            assert p.returncode == 0, err[-2000:]
        return [out.strip().splitlines()[-1] for _, out, _ in results]

    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    assert job(1, one) == ["sum 3.0 True"]
    assert os.listdir(one)  # the control: one process writes its programs
    assert job(2, two) == ["sum 6.0 False"] * 2
    assert not os.path.exists(two) or not os.listdir(two)
