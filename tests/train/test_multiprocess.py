"""One training job as several processes (jax.distributed over gloo on 127.0.0.1), through
the `r1jax-train` command line, against the same job as one process.

The job: the CPU demo's tiny config from a random policy (no warm start), 3 DAPO steps of 8
prompts (groups) of responses of at most 16 tokens, with dynamic sampling streamed from the
continuous-batching engine (64 slots, as the DAPO recipes roll out), a KL term (kl_beta 0.01)
and 2 minibatches per step, on a mesh of 8 CPU devices (fsdp 4 x tensor 2), run as 1 process
x 8 devices and as 2 processes x 4 devices. The checkpoint, lost-process and SIGTERM tests run
their multi-process jobs as 2 processes x 2 devices (fsdp 2 x tensor 2): XLA:CPU makes each
device its own gloo rank, so a collective over 8 devices of 2 processes costs several times
one over 4 (a 3-step job: ~58 s against ~36 s on this 2-core machine), and the restarts
then also change the device count (8 -> 4 or 4 -> 8), as a resume on another slice does.
The accuracy reward reads the completion's first number, so that a random policy solves some
prompts sometimes and dynamic sampling has informative groups to keep.

The two layouts compute the same sums in a different order: an all-reduce across processes
runs over gloo's TCP ring, one inside a process over XLA:CPU's in-process reduction, so
floating-point results agree to rounding (~1e-7 relative here), not bit for bit. Where
rounding decides a token (near-tied logits, e.g. a random model over a 151k vocabulary), the
two runs part from that token on, as any two layouts that sum in another order would; the
demo's 13-token vocabulary keeps this job clear of such ties. Every metric
and every parameter is compared with a tolerance of 1e-5 (relative for metrics, absolute for
parameters of magnitude <= ~1); a different sampled token, prompt order or kept group would
move them by far more.
"""

import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from typing import Optional

import numpy as np
import pytest
from safetensors.numpy import load_file

from r1jax.metrics import read_metrics
from tests.xla_env import cpu_xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = os.path.join(os.path.dirname(sys.executable), "r1jax-train")
JOB = ["--config=configs/demo_cpu.py:tiny", "--config.train.progress_bar=False",
       "--config.sft.steps=0",
       "--config.rollout.max_slots=64", "--config.rollout.max_new_tokens=16",
       "--config.algo.kl_beta=0.01", "--config.train.steps=3", "--config.eval.limit=8",
       "--config.train.prompts_per_step=8",
       "--config.rewards.functions=[{'name': 'accuracy', 'weight': 1.0, 'kwargs': "
       "{'mode': 'regex', 'pattern': '^(\\\\d+)'}}]"]
# A job's devices (all processes together) -> its RL mesh.
MESHES = {8: ("--config.mesh.fsdp=4", "--config.mesh.tensor=2"),
          4: ("--config.mesh.fsdp=2", "--config.mesh.tensor=2")}
TOLERANCE = 1e-5
IGNORED = ("time/", "perf/", "eval/seconds")
TIMEOUT_S = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(run_dir: str, processes: int, *flags: str, logs: str = "", devices: int = 8,
          command: Optional[tuple] = None) -> list:
    """Starts `command` (default: the RL job on the mesh of `devices`) as `processes`
    processes x (devices / processes) devices; returns them."""
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=cpu_xla_flags(devices // processes))
    command = command or (TRAIN, *JOB, *MESHES[devices])
    port = free_port()
    procs = []
    for i in range(processes):
        cmd = [*command, f"--config.train.run_dir={run_dir}", *flags]
        if processes > 1:
            cmd += [f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                    f"--config.distributed.num_processes={processes}",
                    f"--config.distributed.process_id={i}",
                    "--config.distributed.heartbeat_timeout_s=30",
                    "--config.distributed.initialization_timeout_s=120"]
        log = open(f"{logs or run_dir}.{i}.log", "w")
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                      stderr=subprocess.STDOUT))
    return procs


def finish(procs: list, timeout: float = TIMEOUT_S) -> list[int]:
    """Waits for every process (killing, by id, the ones still running at the deadline)."""
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for q in procs:
                if q.poll() is None:
                    q.kill()
            raise
    return codes


def run(run_dir: str, processes: int, *flags: str, devices: int = 8,
        command: Optional[tuple] = None) -> None:
    codes = finish(start(run_dir, processes, *flags, devices=devices, command=command))
    logs = "".join(open(f"{run_dir}.{i}.log").read()[-3000:] for i in range(processes))
    assert codes == [0] * processes, logs


def params(run_dir: str) -> dict:
    out = {}
    for path in glob.glob(os.path.join(run_dir, "export", "*.safetensors")):
        out.update(load_file(path))
    assert out, f"no export in {run_dir}"
    return out


# How the in-flight work a step no longer needs splits between groups admitted to the engine
# and prompts not yet started: the engine admits prompts in multiples of the mesh's batch
# parallelism, so the split (not the sum, nor anything trained on) depends on the mesh.
SCHEDULE = ("dynamic_sampling/groups_unfinished", "dynamic_sampling/prompts_unstarted")


def assert_same_run(a: str, b: str, steps=(1, 2, 3), same_mesh: bool = True) -> None:
    """The RL metrics of `steps` and the final parameters of runs a and b agree (where b
    ran some steps on another mesh, the SCHEDULE split aside)."""
    rows_a = {r["step"]: r for r in read_metrics(a)}
    rows_b = {r["step"]: r for r in read_metrics(b)}
    for step in steps:
        ra, rb = rows_a[step], rows_b[step]
        keys = [k for k in ra if not k.startswith(IGNORED) and isinstance(ra[k], (int, float))]
        assert {"reward/mean", "grad_norm", "policy/loss", "policy/kl",
                "dynamic_sampling/groups_kept", *SCHEDULE} <= set(keys)
        if not same_mesh:
            keys = [k for k in keys if k not in SCHEDULE]
            assert sum(ra[k] for k in SCHEDULE) == sum(rb[k] for k in SCHEDULE), step
        for k in keys:
            assert rb[k] == pytest.approx(ra[k], rel=TOLERANCE, abs=TOLERANCE), (step, k)
    pa, pb = params(a), params(b)
    assert sorted(pa) == sorted(pb)
    for name in pa:
        np.testing.assert_allclose(pa[name], pb[name], rtol=0, atol=TOLERANCE, err_msg=name)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, data_dir):
    """The reference: the job as 1 process x 8 devices, uninterrupted."""
    os.environ["R1JAX_DATA_DIR"] = data_dir
    run_dir = str(tmp_path_factory.mktemp("mp") / "one")
    run(run_dir, 1)
    rows = read_metrics(run_dir)
    kept = [r["dynamic_sampling/groups_kept"] for r in rows if "grad_norm" in r]
    assert len(kept) == 3 and min(kept) >= 4  # dynamic sampling had groups to keep
    return run_dir


def test_two_processes_equal_one(one_process, tmp_path):
    run_dir = str(tmp_path / "two")
    run(run_dir, 2)
    assert_same_run(one_process, run_dir)
    # Written once: one metrics row per step, one summary, one export.
    steps = [json.loads(line)["step"] for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    assert steps.count(3) == 2  # the step's metrics row and the evaluation after RL


def test_checkpointed_as_one_process_finished_as_two(one_process, tmp_path):
    """Checkpointed after 2 steps as 1 process x 8 devices, finished as 2 x 2: the same run
    (the reverse, 2 -> 1, is the restart of the lost-process test)."""
    run_dir = str(tmp_path / "run")
    run(run_dir, 1, "--config.train.steps=2")
    run(run_dir, 2, devices=4)
    assert_same_run(one_process, run_dir, same_mesh=False)


def wait_for_step(run_dir: str, step: int, procs: list, timeout: float = TIMEOUT_S) -> None:
    path = os.path.join(run_dir, "metrics.jsonl")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path) and any(json.loads(line)["step"] == step and "grad_norm" in line
                                        for line in open(path) if line.strip()):
            return
        assert all(p.poll() is None for p in procs), "a process ended early"
        time.sleep(0.2)
    raise AssertionError(f"step {step} not reached")


def test_a_lost_process_stops_the_other_and_a_restart_resumes(one_process, tmp_path):
    run_dir = str(tmp_path / "run")
    procs = start(run_dir, 2, "--config.train.checkpoint_every=1", devices=4)
    try:
        wait_for_step(run_dir, 1, procs)
        procs[1].kill()
        killed = time.monotonic()
        code = procs[0].wait(timeout=120)
        waited = time.monotonic() - killed
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    log = open(f"{run_dir}.0.log").read()
    assert code != 0
    assert waited < 60, waited  # the heartbeat timeout is 30 s; the lost link is seen sooner
    # r1jax's own message, or, when JAX's coordination service declares the loss first (at
    # the heartbeat timeout), JAX's abort: both name process 1.
    assert "lost process 1 of 2" in log or "Task 1 heartbeat timeout" in log, log[-2000:]
    # Restarted, here as 1 process x 8 devices: it resumes from the last complete checkpoint
    # (a topology change on resume) and finishes as the uninterrupted run.
    run(run_dir, 1)
    assert_same_run(one_process, run_dir, same_mesh=False)


def test_sigterm_to_one_process_stops_all_at_the_same_step(tmp_path):
    run_dir = str(tmp_path / "run")
    procs = start(run_dir, 2, "--config.train.checkpoint_every=0", devices=4)
    try:
        wait_for_step(run_dir, 1, procs)
        procs[1].send_signal(signal.SIGTERM)
        codes = finish(procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [0, 0]
    # Every process printed its summary: stopped after the same step.
    stopped_at = [re.findall(r'"stopped_at": (\d+)', open(f"{run_dir}.{i}.log").read())
                  for i in range(2)]
    assert stopped_at[0] == stopped_at[1] and len(stopped_at[0]) == 1, stopped_at
    checkpoints = sorted(int(d) for d in os.listdir(os.path.join(run_dir, "checkpoints"))
                         if d.isdigit())
    # One checkpoint before RL (step 0) and the one SIGTERM saved, at the step they stopped.
    assert checkpoints == [0, int(stopped_at[0][0])] and checkpoints[1] < 3, checkpoints
    assert "SIGTERM: saving a checkpoint" in open(f"{run_dir}.0.log").read()


def test_rejection_sampling_and_evaluation_as_two_processes_equal_one(one_process, tmp_path):
    """`r1jax-rejection-sample` and `r1jax-eval` on the reference run's checkpoint, as 2
    processes x 2 devices (`--distributed.*` flags), write exactly the files the same
    commands write as this test's one process of 8 devices: each process samples every
    completion and scores its share, and process 0 alone writes (a second writer would
    duplicate every line)."""
    from r1jax import rejection
    from r1jax.evaluation import cli
    questions = tmp_path / "sums.jsonl"
    questions.write_text("".join(json.dumps({"q": f"{a}+{b}=", "a": str(a + b)}) + "\n"
                                 for a, b in ((3, 4), (5, 2), (1, 8), (6, 6), (9, 3), (2, 2))))
    tools = {
        "rejection": (rejection.main, [sys.executable, "-m", "r1jax.rejection"],
                      ["--k=4", "--limit=8", "--batch_size=4", "--temperature=1.0",
                       "--max_new_tokens=8", "--resample_failed=1", "--seed=3",
                       # correct when a digit of the completion is the sum's first: a random
                       # policy gets some, so every output file has lines
                       "--extraction=regex", "--answer_pattern=(\\d)"]),
        "eval": (cli.main, [sys.executable, "-m", "r1jax.evaluation.cli"],
                 [f"--benchmarks={questions}", "--question_key=q", "--answer_key=a",
                  "--n=3", "--temperature=1.0", "--max_new_tokens=8", "--batch_size=4",
                  "--no_progress"]),
    }
    for name, (main, command, flags) in tools.items():
        flags = [f"--checkpoint={one_process}", *flags]
        assert main([*flags, f"--out_dir={tmp_path / name}_one"]) == 0
        out = tmp_path / f"{name}_two"
        port = free_port()
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=cpu_xla_flags(2))
        procs = [subprocess.Popen(
            [*command, *flags, f"--out_dir={out}",
             f"--distributed.coordinator_address=127.0.0.1:{port}",
             "--distributed.num_processes=2", f"--distributed.process_id={i}",
             "--distributed.heartbeat_timeout_s=30"],
            cwd=ROOT, env=env, stdout=open(f"{out}.{i}.log", "w"), stderr=subprocess.STDOUT)
            for i in range(2)]
        codes = finish(procs)
        logs = [open(f"{out}.{i}.log").read() for i in range(2)]
        assert codes == [0, 0], "".join(log[-3000:] for log in logs)
        one = sorted(os.listdir(tmp_path / f"{name}_one"))
        assert sorted(os.listdir(out)) == one and len(one) >= 3, one
        for f in one:
            a, b = (open(os.path.join(d, f)).read() for d in (tmp_path / f"{name}_one", out))
            if f.endswith(".jsonl"):
                assert a == b and a, f  # the same lines, once
            else:  # reports: the same figures apart from the wall-clock time
                drop = lambda d: {k: v for k, v in json.loads(d).items()  # noqa: E731
                                  if k not in ("seconds", "written_at")}
                assert drop(a) == drop(b), f
        # One console report: process 0's.
        marker = "prompts complete" if name == "rejection" else "reports in"
        assert marker in logs[0] and marker not in logs[1]
