"""The cost of crossing process boundaries: one training job as P processes vs one process.

The same `r1jax-train` job (config, overrides, mesh over D devices in all) runs as 1 process
x D devices and as P processes x D / P devices (jax.distributed on 127.0.0.1; on CPU the
cross-process collectives run over gloo/TCP), alternating, `--repeats` times. Each run logs
its steps' wall time (`time/step_s`, rollout + reward + update); the first step (compiles)
is left out, and the summary gives per layout the median step time over the other steps of
all repeats, and the ratio P-process / 1-process per repeat (median, min, max).

    python -m r1jax.benchmarks.processes                              # 2 x 4 vs 1 x 8, CPU
    python -m r1jax.benchmarks.processes --processes=4 --steps=6 --repeats=3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_JOB = ("--config=configs/demo_cpu.py:tiny", "--config.sft.steps=0",
               "--config.mesh.fsdp=4", "--config.mesh.tensor=2", "--config.eval.source=None",
               "--config.train.export_hf=False", "--config.train.progress_bar=False",
               "--config.rewards.functions=[{'name': 'accuracy', 'weight': 1.0, 'kwargs': "
               "{'mode': 'regex', 'pattern': '^(\\\\d+)'}}]")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_job(job: list, processes: int, devices: int, steps: int, run_dir: str,
            timeout_s: float) -> list[float]:
    """Runs the job as `processes` processes; returns its steps' `time/step_s`."""
    train = os.path.join(os.path.dirname(sys.executable), "r1jax-train")
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"),
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices // processes}")
    port = _free_port()
    procs = []
    for i in range(processes):
        cmd = [train, *job, f"--config.train.steps={steps}", f"--config.train.run_dir={run_dir}",
               "--config.train.checkpoint_every=0"]
        if processes > 1:
            cmd += [f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                    f"--config.distributed.num_processes={processes}",
                    f"--config.distributed.process_id={i}"]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
    try:
        errors = [p.communicate(timeout=timeout_s)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    if any(p.returncode for p in procs):
        raise RuntimeError(f"{processes}-process run failed: " + "".join(e[-2000:] for e in errors))
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r["time/step_s"] for r in rows if "time/step_s" in r]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--devices", type=int, default=8, help="devices in all")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout_s", type=float, default=900)
    ap.add_argument("job", nargs="*", help="r1jax-train flags (default: the CPU demo, tiny)")
    a = ap.parse_args(argv)
    if a.devices % a.processes:
        ap.error(f"--processes {a.processes} does not divide --devices {a.devices}")
    job = a.job or list(DEFAULT_JOB)
    times = {1: [], a.processes: []}
    ratios = []
    work = tempfile.mkdtemp(prefix="r1jax-processes-")
    try:
        for r in range(a.repeats):
            medians = {}
            for p in (1, a.processes):
                run_dir = os.path.join(work, f"r{r}p{p}")
                steps = run_job(job, p, a.devices, a.steps, run_dir, a.timeout_s)[1:]
                times[p] += steps
                medians[p] = float(np.median(steps))
            ratios.append(medians[a.processes] / medians[1])
            print(f"repeat {r}: 1 x {a.devices}: {medians[1]:.3f} s/step, {a.processes} x "
                  f"{a.devices // a.processes}: {medians[a.processes]:.3f} s/step, ratio "
                  f"{ratios[-1]:.2f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = {"one_process_step_s": float(np.median(times[1])),
           "multi_process_step_s": float(np.median(times[a.processes])),
           "processes": a.processes, "devices": a.devices,
           "ratio_median": float(np.median(ratios)), "ratio_min": float(min(ratios)),
           "ratio_max": float(max(ratios))}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
