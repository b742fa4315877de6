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


def test_processes_started_with_different_configs_refuse_to_start(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=cpu_xla_flags(1))
    port = free_port()
    procs = [subprocess.Popen(
        [TRAIN, "--config=configs/demo_cpu.py:tiny", f"--config.train.run_dir={tmp_path}",
         f"--config.train.seed={i}",  # the mistake: process 1 got another seed
         f"--config.distributed.coordinator_address=127.0.0.1:{port}",
         "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}",
         "--config.distributed.initialization_timeout_s=60"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    try:
        results = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 2, err[-2000:]
        assert "processes [1] were started with a config different from process 0's" in err
