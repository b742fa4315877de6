"""The launch scripts: syntax, the commands their dry runs print, and the per-process parts.

Nothing here reaches a cloud or a cluster: `gcloud`, `scontrol` and `srun` are fakes on PATH
that record how they were called, and the dry runs must not call gcloud at all. The command a
TPU worker runs and the command srun starts in each task are executed locally with a fake
trainer that prints its arguments, so the tests check the arguments every process receives.
"""

import glob
import os
import shlex
import shutil
import signal
import subprocess
import time

import pytest

import r1jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU_POD = os.path.join(ROOT, "launch", "tpu_pod.sh")
SLURM = os.path.join(ROOT, "launch", "slurm_gpu.sbatch")
BASH = shutil.which("bash")
pytestmark = pytest.mark.skipif(BASH is None, reason="needs bash")

CONFIG = "configs/dapo_qwen2_5_32b.py"
OVERRIDES = ["--config.model.path=/models/Qwen2.5-32B", "--config.train.run_dir=gs://bucket/dapo32b",
             "--config.rewards.functions[0].kwargs.mode=boxed answer"]
# The fake trainer: its arguments, one a line, then the exit status in $FAKE_RC.
FAKE_TRAINER = """#!/usr/bin/env bash
printf '%s\\n' "$@"
exit "${FAKE_RC:-0}"
"""
NODELIST = "gpu[003-004],gpu010"
FAKE_SCONTROL = f"""#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/scontrol.calls"
if [ "$1 $2" = "show hostnames" ] && [ "$3" = "{NODELIST}" ]; then
  printf 'gpu003\\ngpu004\\ngpu010\\n'
elif [ "$1" != requeue ]; then
  exit 1
fi
"""


def write_exe(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)
    return path


@pytest.fixture
def fake_bin(tmp_path):
    """A PATH folder with a gcloud that records its calls and the fake scontrol."""
    bin_dir = tmp_path / "bin"
    write_exe(str(bin_dir / "gcloud"), '#!/usr/bin/env bash\necho "$*" >> "$(dirname "$0")/gcloud.calls"\n')
    write_exe(str(bin_dir / "scontrol"), FAKE_SCONTROL)
    return bin_dir


def run(script, *args, env=None, path=None):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TPU_", "DRY_RUN", "R1JAX_"))}
    if path is not None:
        full_env["PATH"] = f"{path}{os.pathsep}{full_env['PATH']}"
    full_env.update(env or {})
    return subprocess.run([BASH, script, *args], env=full_env, capture_output=True, text=True, timeout=60)


def commands(stdout):
    return [shlex.split(line) for line in stdout.splitlines()]


def remote_command(argv):
    (command,) = [a[len("--command="):] for a in argv if a.startswith("--command=")]
    return command


def trainer_argv(command):
    """The trainer's argv inside a worker's command: from .venv/bin/<cli> to the redirection."""
    start = command.rindex(".venv/bin/", 0, command.index(" --config="))
    return shlex.split(command[start:command.index(" >> ", start)])


def tpu_pod(*args, fake_bin, env=None):
    proc = run(TPU_POD, "--name=r1", "--zone=us-east5-a", *args, env={"DRY_RUN": "1", **(env or {})},
               path=fake_bin)
    assert proc.returncode == 0, proc.stderr
    assert not (fake_bin / "gcloud.calls").exists(), "a dry run called gcloud"
    return commands(proc.stdout)


def test_every_launch_script_passes_bash_n():
    scripts = sorted(glob.glob(os.path.join(ROOT, "launch", "*.sh"))
                     + glob.glob(os.path.join(ROOT, "launch", "*.sbatch")))
    assert [os.path.basename(s) for s in scripts] == ["slurm_gpu.sbatch", "tpu_pod.sh"]
    for script in scripts:
        proc = subprocess.run([BASH, "-n", script], capture_output=True, text=True)
        assert proc.returncode == 0, (script, proc.stderr)


def test_tpu_train_on_a_new_queued_spot_slice_creates_installs_and_runs_on_all_workers(fake_bin):
    cmds = tpu_pod("--accelerator-type=v5p-64", "--queued", "--spot", "--env=R1JAX_DATA_DIR=/data",
                   "train", CONFIG, *OVERRIDES, fake_bin=fake_bin)
    qr = ["gcloud", "compute", "tpus", "queued-resources"]
    assert cmds[0] == qr + ["describe", "r1", "--zone=us-east5-a", "--format=value(state.state)"]
    assert cmds[1] == qr + ["create", "r1", "--node-id=r1", "--zone=us-east5-a", "--accelerator-type=v5p-64",
                            "--runtime-version=v2-alpha-tpuv5", "--spot"]
    assert cmds[2] == cmds[0]  # waits for ACTIVE
    assert cmds[3][:2] == ["git", "-C"] and "tar" in cmds[3]  # this checkout, packed
    assert cmds[4] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "/tmp/r1jax-r1.tar.gz",
                       "r1:/tmp/r1jax.tar.gz", "--zone=us-east5-a", "--worker=all"]
    install, train = cmds[5], cmds[6]
    assert len(cmds) == 7
    for ssh in (install, train):
        assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "r1"]
        assert "--worker=all" in ssh
        syntax = subprocess.run([BASH, "-n", "-c", remote_command(ssh)], capture_output=True, text=True)
        assert syntax.returncode == 0, syntax.stderr
    assert "pip install -q -c constraints.txt -e '.[tpu]'" in remote_command(install)
    assert trainer_argv(remote_command(train)) == [".venv/bin/r1jax-train", f"--config={CONFIG}", *OVERRIDES]
    assert "env R1JAX_DATA_DIR=/data .venv/bin/r1jax-train" in remote_command(train)


def test_tpu_install_clones_with_git_and_runs_the_setup_command(fake_bin):
    (install,) = tpu_pod("--git=https://example.com/r1jax.git", "--ref=v1", "--setup=gcloud storage cp -r gs://b/m m",
                         "install", fake_bin=fake_bin)
    assert install[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "r1"] and "--worker=all" in install
    command = remote_command(install)
    assert "git clone -q https://example.com/r1jax.git r1jax" in command and "checkout -q v1" in command
    assert command.endswith("-e '.[tpu]'; cd; gcloud storage cp -r gs://b/m m")
    assert subprocess.run([BASH, "-n", "-c", command]).returncode == 0


def test_tpu_train_on_a_ready_slice_only_runs_the_command(fake_bin):
    cmds = tpu_pod("--project=proj", "--cli=r1jax-sft", "train", "configs/sft/limo.py:tiny",
                   "--config.sft.epochs=1", fake_bin=fake_bin, env={"DRY_RUN_STATE": "READY"})
    assert [c[:5] for c in cmds] == [["gcloud", "compute", "tpus", "tpu-vm", "describe"],
                                     ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]]
    assert cmds[0][5:] == ["r1", "--zone=us-east5-a", "--project=proj", "--format=value(state)"]
    assert cmds[1][5:9] == ["r1", "--zone=us-east5-a", "--project=proj", "--worker=all"]
    assert trainer_argv(remote_command(cmds[1])) == [".venv/bin/r1jax-sft", "--config=configs/sft/limo.py:tiny",
                                                     "--config.sft.epochs=1"]


def test_tpu_train_replaces_a_preempted_slice_then_reinstalls(fake_bin):
    cmds = tpu_pod("--spot", "train", CONFIG, fake_bin=fake_bin, env={"DRY_RUN_STATE": "PREEMPTED"})
    verbs = [c[4] if c[0] == "gcloud" else c[0] for c in cmds]
    assert verbs == ["describe", "delete", "describe", "create", "describe", "git", "scp", "ssh", "ssh"]
    assert cmds[1] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "r1", "--zone=us-east5-a", "--quiet"]
    assert cmds[3] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "r1", "--zone=us-east5-a",
                       "--accelerator-type=v5p-8", "--version=v2-alpha-tpuv5", "--spot"]


def test_tpu_options_come_from_the_environment_too(fake_bin):
    env = {"TPU_NAME": "envtpu", "TPU_ZONE": "europe-west4-a", "TPU_ACCELERATOR_TYPE": "v6e-64",
           "TPU_BEST_EFFORT": "1", "DRY_RUN": "1"}
    proc = run(TPU_POD, "create", env=env, path=fake_bin)
    assert proc.returncode == 0, proc.stderr
    cmds = commands(proc.stdout)
    # best-effort is a queued-resource option of gcloud's alpha track.
    assert cmds[1] == ["gcloud", "alpha", "compute", "tpus", "queued-resources", "create", "envtpu",
                       "--node-id=envtpu", "--zone=europe-west4-a", "--accelerator-type=v6e-64",
                       "--runtime-version=v2-alpha-tpuv6e", "--best-effort"]


@pytest.mark.parametrize("accelerator,version", [("v5litepod-16", "v2-alpha-tpuv5-lite"),
                                                 ("v4-32", "tpu-ubuntu2204-base"), ("v5p-128", "v2-alpha-tpuv5")])
def test_tpu_runtime_version_follows_the_generation(fake_bin, accelerator, version):
    cmds = tpu_pod(f"--accelerator-type={accelerator}", "create", fake_bin=fake_bin)
    assert f"--version={version}" in cmds[1]


def test_tpu_create_reuses_an_existing_slice_and_delete_removes_the_queued_resource(fake_bin):
    assert [c[4] for c in tpu_pod("create", fake_bin=fake_bin, env={"DRY_RUN_STATE": "READY"})] == ["describe"]
    assert tpu_pod("--queued", "delete", fake_bin=fake_bin) == [
        ["gcloud", "compute", "tpus", "queued-resources", "delete", "r1", "--zone=us-east5-a", "--force", "--quiet"]]


def test_tpu_logs_stop_and_ssh(fake_bin):
    (logs,) = tpu_pod("--worker=3", "logs", fake_bin=fake_bin)
    assert "--worker=3" in logs and remote_command(logs) == "tail -n 200 -F r1jax/logs/worker3.log"
    (stop,) = tpu_pod("stop", fake_bin=fake_bin)
    assert "--worker=all" in stop and "kill -TERM" in remote_command(stop)
    (ssh,) = tpu_pod("ssh", "--", "gcloud storage cp -r gs://b/models ~/models", fake_bin=fake_bin)
    assert "--worker=all" in ssh and remote_command(ssh) == "gcloud storage cp -r gs://b/models ~/models"


@pytest.mark.parametrize("args,message", [
    ([], "missing subcommand"),
    (["launch"], "unknown subcommand launch"),
    (["train"], "train needs a CONFIG"),
    (["--bogus", "create"], "unknown option --bogus"),
    (["--max-restarts=many", "create"], "--max-restarts takes a number"),
    (["logs", "extra"], "usage:"),
])
def test_tpu_bad_usage_exits_2_with_usage(fake_bin, args, message):
    proc = run(TPU_POD, "--name=r1", "--zone=z", *args, env={"DRY_RUN": "1"}, path=fake_bin)
    assert proc.returncode == 2 and message in proc.stderr and "usage:" in proc.stderr


def test_tpu_without_a_name_exits_2_with_usage(fake_bin):
    proc = run(TPU_POD, "create", env={"DRY_RUN": "1"}, path=fake_bin)
    assert proc.returncode == 2 and "--name (or TPU_NAME) is required" in proc.stderr


def worker_setup(tmp_path, fake_bin):
    """A worker's home: the checkout at ~/r1jax with the fake trainer, and a metadata fake."""
    home = tmp_path / "home"
    write_exe(str(home / "r1jax" / ".venv" / "bin" / "r1jax-train"), FAKE_TRAINER)
    write_exe(str(fake_bin / "curl"), '#!/usr/bin/env bash\necho "$WORKER"\n')
    return home


def run_on_worker(command, home, fake_bin, worker, rc=0):
    env = {"PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}", "HOME": str(home), "WORKER": str(worker),
           "FAKE_RC": str(rc)}
    return subprocess.run([BASH, "-c", command], cwd=home, env=env, capture_output=True, text=True, timeout=60)


def test_tpu_worker_command_streams_worker_0_and_logs_the_others(tmp_path, fake_bin):
    (_, train) = tpu_pod("train", CONFIG, *OVERRIDES, fake_bin=fake_bin, env={"DRY_RUN_STATE": "READY"})
    command = remote_command(train)
    home = worker_setup(tmp_path, fake_bin)
    expected = [f"--config={CONFIG}", *OVERRIDES]
    first = run_on_worker(command, home, fake_bin, worker=0, rc=7)
    assert first.returncode == 7  # the trainer's exit status reaches gcloud
    assert first.stdout.splitlines() == expected
    other = run_on_worker(command, home, fake_bin, worker=1)
    assert other.returncode == 0 and other.stdout == ""
    assert (home / "r1jax" / "logs" / "worker1.log").read_text().splitlines() == expected
    # A relaunch streams only its own lines, not the previous run's.
    again = run_on_worker(command, home, fake_bin, worker=0)
    assert again.returncode == 0 and again.stdout.splitlines() == expected


def test_tpu_worker_command_stops_an_earlier_run_with_sigterm(tmp_path, fake_bin):
    (_, train) = tpu_pod("train", CONFIG, fake_bin=fake_bin, env={"DRY_RUN_STATE": "READY"})
    home = worker_setup(tmp_path, fake_bin)
    stale = write_exe(str(home / "r1jax" / "stale-r1jax-run"),
                      '#!/usr/bin/env bash\ntrap \'echo saved > "$0.term"; exit 0\' TERM\n'
                      'while :; do sleep 0.1; done\n')
    old = subprocess.Popen([BASH, stale])
    os.makedirs(home / "r1jax" / "logs")
    (home / "r1jax" / "logs" / "run.pid").write_text(f"{old.pid}\n")
    try:
        done = run_on_worker(remote_command(train), home, fake_bin, worker=0)
    finally:
        old.kill()
    assert done.returncode == 0
    assert (home / "r1jax" / "stale-r1jax-run.term").read_text() == "saved\n"


def slurm_env(**extra):
    env = {"SLURM_JOB_ID": "1234", "SLURM_JOB_NODELIST": NODELIST, "SLURM_JOB_NUM_NODES": "3",
           "SLURM_NTASKS": "3", "SLURM_GPUS_ON_NODE": "8"}
    env.update(extra)
    return env


def srun_tasks(srun_argv, tmp_path, ntasks, tasks_per_node, procids=None, srun_options=()):
    """Runs the task command of a printed srun line as srun would, for each task in procids."""
    bash = srun_argv.index("bash")
    assert srun_argv[:bash] == ["srun", "--kill-on-bad-exit=1", f"--ntasks={ntasks}",
                                f"--ntasks-per-node={tasks_per_node}", *srun_options]
    assert srun_argv[bash + 1] == "-c"
    task, cli, *args = srun_argv[bash + 2:]
    assert cli == ".venv/bin/r1jax-train"
    trainer = write_exe(str(tmp_path / "task" / "r1jax-train"), FAKE_TRAINER)
    argvs = []
    for procid in range(ntasks) if procids is None else procids:
        env = {"PATH": os.environ["PATH"], "SLURM_PROCID": str(procid),
               "SLURM_LOCALID": str(procid % tasks_per_node)}
        proc = subprocess.run([BASH, "-c", task, trainer, *args], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        argvs.append(proc.stdout.splitlines())
    return argvs


def test_slurm_one_process_per_node_gets_all_gpus_and_its_process_id(tmp_path, fake_bin):
    proc = run(SLURM, CONFIG, *OVERRIDES, env=slurm_env(DRY_RUN="1"), path=fake_bin)
    assert proc.returncode == 0, proc.stderr
    (srun,) = commands(proc.stdout)
    assert (fake_bin / "scontrol.calls").read_text() == f"show hostnames {NODELIST}\n"
    port = 61440 + 1234 % 4096
    for procid, argv in enumerate(srun_tasks(srun, tmp_path, ntasks=3, tasks_per_node=1)):
        assert argv == [f"--config={CONFIG}",
                        f"--config.distributed.coordinator_address=gpu003:{port}",
                        "--config.distributed.num_processes=3",
                        "--config.distributed.local_device_ids=0,1,2,3,4,5,6,7",
                        f"--config.distributed.process_id={procid}", *OVERRIDES]


def test_slurm_one_process_per_gpu_gets_its_local_gpu(tmp_path, fake_bin):
    env = slurm_env(DRY_RUN="1", SLURM_NTASKS="24", R1JAX_COORDINATOR_PORT="9999", SLURM_GPUS_ON_NODE="",
                    SLURM_GPUS_PER_NODE="h100:8", SLURM_CPUS_PER_TASK="12")
    proc = run(SLURM, CONFIG, env=env, path=fake_bin)
    assert proc.returncode == 0, proc.stderr
    (srun,) = commands(proc.stdout)
    argvs = srun_tasks(srun, tmp_path, ntasks=24, tasks_per_node=8, procids=[0, 9, 10],
                       srun_options=["--cpus-per-task=12"])
    assert [a[1:] for a in argvs[:1]] == [["--config.distributed.coordinator_address=gpu003:9999",
                                           "--config.distributed.num_processes=24",
                                           "--config.distributed.local_device_ids=0",
                                           "--config.distributed.process_id=0"]]
    assert [(a[3], a[4]) for a in argvs[1:]] == [
        ("--config.distributed.local_device_ids=1", "--config.distributed.process_id=9"),
        ("--config.distributed.local_device_ids=2", "--config.distributed.process_id=10")]


def test_slurm_single_task_runs_the_plain_command(tmp_path, fake_bin):
    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "1", "SLURM_NTASKS": "1", "DRY_RUN": "1",
           "R1JAX_CLI": ".venv/bin/r1jax-train"}
    proc = run(SLURM, CONFIG, "--config.train.steps=3", env=env, path=fake_bin)
    assert proc.returncode == 0, proc.stderr
    (srun,) = commands(proc.stdout)
    assert srun_tasks(srun, tmp_path, ntasks=1, tasks_per_node=1) == [[f"--config={CONFIG}", "--config.train.steps=3"]]
    assert not (fake_bin / "scontrol.calls").exists()


@pytest.mark.parametrize("args,env,code,message", [
    ([], slurm_env(DRY_RUN="1"), 2, "usage:"),
    (["--config.x=1"], slurm_env(DRY_RUN="1"), 2, "usage:"),
    ([CONFIG], {"DRY_RUN": "1"}, 1, "not in a SLURM job"),
    ([CONFIG], slurm_env(DRY_RUN="1", SLURM_NTASKS="4"), 1, "4 tasks do not split evenly over 3 nodes"),
    ([CONFIG], slurm_env(DRY_RUN="1", SLURM_NTASKS="12"), 1, "4 tasks per node: use 1 (a process per node) or 8"),
])
def test_slurm_bad_usage_exits_non_zero_with_a_message(fake_bin, args, env, code, message):
    proc = run(SLURM, *args, env=env, path=fake_bin)
    assert proc.returncode == code and message in proc.stderr and proc.stdout == ""


def test_slurm_forwards_sigterm_to_srun_and_requeues(tmp_path, fake_bin):
    started = tmp_path / "srun.started"
    write_exe(str(fake_bin / "srun"), f"""#!/usr/bin/env bash
trap 'echo "$*" > {tmp_path}/srun.term; exit 0' TERM
echo $$ > {started}
while :; do sleep 0.1; done
""")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(slurm_env(SLURM_SUBMIT_DIR=str(tmp_path), PATH=f"{fake_bin}{os.pathsep}{env['PATH']}"))
    job = subprocess.Popen([BASH, SLURM, CONFIG], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    deadline = time.monotonic() + 30
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    job.send_signal(signal.SIGTERM)
    try:
        _, stderr = job.communicate(timeout=30)
    finally:
        if started.exists():  # a fake srun left running by a failed forward
            subprocess.run(["kill", started.read_text().strip()], capture_output=True)
    assert job.returncode == 0, stderr
    assert f"--config={CONFIG}" in (tmp_path / "srun.term").read_text()
    calls = (fake_bin / "scontrol.calls").read_text().splitlines()
    assert calls == [f"show hostnames {NODELIST}", "requeue 1234"]


def test_slurm_distributed_flags_are_valid_trainer_settings(tmp_path, fake_bin):
    proc = run(SLURM, "configs/demo_cpu.py", env=slurm_env(DRY_RUN="1"), path=fake_bin)
    (srun,) = commands(proc.stdout)
    (argv,) = srun_tasks(srun, tmp_path, ntasks=3, tasks_per_node=1, procids=[2])
    overrides = [a[len("--config."):] for a in argv if a.startswith("--config.")]
    dist = r1jax.load_config(os.path.join(ROOT, "configs", "demo_cpu.py"), overrides).distributed
    assert (dist.coordinator_address, dist.num_processes, dist.process_id, dist.local_device_ids) == (
        f"gpu003:{61440 + 1234 % 4096}", 3, 2, "0,1,2,3,4,5,6,7")


def test_slurm_passes_on_a_failed_step_without_requeueing(tmp_path, fake_bin):
    write_exe(str(fake_bin / "srun"), "#!/usr/bin/env bash\nexit 7\n")
    proc = run(SLURM, CONFIG, env=slurm_env(SLURM_SUBMIT_DIR=str(tmp_path)), path=fake_bin)
    assert proc.returncode == 7
    assert (fake_bin / "scontrol.calls").read_text().splitlines() == [f"show hostnames {NODELIST}"]
