"""The sandbox's limits and isolation, tried by hostile programs, on both backends.

The rlimits fallback does not isolate the file system, the network or same-user processes
(r1jax.rewards.sandbox says so); those tests are skipped for it with that reason.
"""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import textwrap
import time
import uuid

import pytest

from r1jax.rewards import sandbox

BWRAP_PROBLEM = sandbox._probe_bwrap(sandbox.default_python())
NOT_ISOLATED = "the rlimits fallback does not isolate the file system, network or processes"


@pytest.fixture(params=["bwrap", "rlimits"])
def kind(request):
    if request.param == "bwrap" and BWRAP_PROBLEM is not None:
        pytest.skip(BWRAP_PROBLEM)
    return request.param


def run(kind, source, stdin=b"", **limits):
    return sandbox.run_python(textwrap.dedent(source), stdin,
                              limits=sandbox.Limits(**{"wall_s": 10.0, **limits}), kind=kind)


def processes_with(marker: str) -> list:
    """Pids whose command line contains `marker`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


def sandbox_processes() -> list:
    return processes_with("def _setup():")  # the prelude every sandboxed process carries


def test_runs_a_program_with_its_stdin(kind):
    result = run(kind, "import sys; print(sum(map(int, sys.stdin.read().split())))", b"2 3 37")
    assert result.ok and result.stdout == b"42\n"


def test_kind_is_resolved_and_forced_by_the_environment(monkeypatch):
    monkeypatch.setenv(sandbox.KIND_ENV, "rlimits")
    assert sandbox.sandbox_kind() == "rlimits"
    assert sandbox.sandbox_kind("auto") == ("bwrap" if BWRAP_PROBLEM is None else "rlimits")
    with pytest.raises(ValueError, match="unknown sandbox kind"):
        sandbox.sandbox_kind("docker")


def test_fallback_announces_itself(caplog):
    sandbox._resolve_kind.cache_clear()
    with caplog.at_level("WARNING", logger="r1jax.rewards.sandbox"):
        assert sandbox.sandbox_kind("rlimits") == "rlimits"
    assert "NOT isolated" in caplog.text


def test_infinite_loop_is_killed_at_the_wall_clock_limit(kind):
    start = time.monotonic()
    result = run(kind, "while True: pass", wall_s=1.0, cpu_s=30)
    assert result.timed_out and not result.ok
    assert time.monotonic() - start < 6
    assert not sandbox_processes()


def test_cpu_limit_kills_a_busy_program(kind):
    result = run(kind, "while True: pass", wall_s=20.0, cpu_s=1)
    assert not result.timed_out and result.returncode != 0 and result.seconds < 15


def test_fork_bomb_is_contained_and_cleaned_up(kind):
    result = run(kind, """
        import os
        children = 0
        for _ in range(10000):
            try:
                if os.fork() == 0:
                    import time
                    time.sleep(60)
                    os._exit(0)
                children += 1
            except OSError:
                break
        print(children, flush=True)
        """, wall_s=5.0, processes=8)
    assert int(result.stdout) <= 8
    time.sleep(0.2)
    assert not sandbox_processes()


def test_memory_bomb_fails_with_memory_error(kind):
    result = run(kind, """
        blocks = []
        while True:
            blocks.append(bytearray(50 * 2**20))
        """, memory_mb=256)
    assert result.returncode != 0 and not result.timed_out
    assert b"MemoryError" in result.stderr


def test_files_are_capped_in_size(kind):
    result = run(kind, """
        import signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        written = 0
        try:
            with open("big", "wb") as f:
                for _ in range(100):
                    written += f.write(b"x" * 2**20)
                    f.flush()
        except OSError as e:
            print("refused", written, flush=True)
        """, file_size_mb=4)
    word, size = result.stdout.split()
    assert word == b"refused" and int(size) <= 4 * 2**20


def test_output_beyond_the_cap_is_truncated_and_killed(kind):
    result = run(kind, "while True: print('y' * 1000)", output_bytes=10_000)
    assert result.truncated and len(result.stdout) == 10_000 and not result.ok


def test_writes_only_its_private_directory_which_is_removed(kind):
    result = run(kind, """
        import os
        with open("scratch.txt", "w") as f:
            f.write("temporary")
        print(os.getcwd())
        """)
    assert result.ok
    if kind == "rlimits":
        assert not os.path.exists(result.stdout.decode().strip())


def test_background_process_in_its_group_does_not_survive(kind):
    marker = f"r1jax-orphan-{uuid.uuid4().hex}"
    result = run(kind, f"""
        import subprocess, sys
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "{marker}"])
        print("left it running")
        """)
    assert result.ok and result.stdout == b"left it running\n"
    time.sleep(0.2)
    assert processes_with(marker) == []


def test_session_escape_does_not_survive_bwrap(kind):
    if kind == "rlimits":
        pytest.skip("the rlimits fallback cannot kill a process that left its session")
    marker = f"r1jax-daemon-{uuid.uuid4().hex}"
    result = run(kind, f"""
        import subprocess, sys
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "{marker}"],
                         start_new_session=True)
        """)
    assert result.ok
    time.sleep(0.2)
    assert processes_with(marker) == []


@pytest.fixture
def canaries(tmp_path):
    """A stand-in project folder and home folder with files a program must not see."""
    files = {}
    for name in ("project/r1jax_secret.py", "home/.ssh/id_ed25519"):
        path = tmp_path / name
        path.parent.mkdir(parents=True)
        path.write_text(f"canary {name}")
        files[str(path)] = path.read_text()
    return files


def test_project_and_home_are_invisible_and_unchanged(kind, canaries):
    if kind == "rlimits":
        pytest.skip(NOT_ISOLATED)
    paths = list(canaries) + [os.getcwd() + "/setup.py", os.path.expanduser("~/.bashrc")]
    result = run(kind, f"""
        import os
        for path in {paths!r}:
            for mode in ("r", "a"):
                try:
                    with open(path, mode) as f:
                        print("OPENED", mode, path, f.read() if mode == "r" else f.write("x"))
                except OSError as e:
                    print("denied", mode, path, type(e).__name__)
        print(sorted(os.listdir("/")))
        """)
    assert result.ok and b"OPENED" not in result.stdout
    for path, text in canaries.items():
        with open(path) as f:
            assert f.read() == text
    top = eval(result.stdout.decode().splitlines()[-1])
    assert set(top) <= {"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "sbin",
                        "tmp", "usr"}


def test_no_network(kind):
    if kind == "rlimits":
        pytest.skip(NOT_ISOLATED)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        port = server.getsockname()[1]
        result = run(kind, f"""
            import socket
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=2)
                print("CONNECTED")
            except OSError as e:
                print("refused", type(e).__name__)
            """)
        with pytest.raises(BlockingIOError):
            server.accept()
    assert result.ok and result.stdout.startswith(b"refused")


def test_killing_its_parent_harms_nothing_outside(kind):
    if kind == "rlimits" and os.geteuid() != 0:
        pytest.skip("the rlimits fallback run by a normal user may signal the caller")
    result = run(kind, """
        import os, signal
        try:
            os.kill(os.getppid(), signal.SIGKILL)
        except OSError as e:
            print("refused", type(e).__name__, flush=True)
        """)
    assert result.returncode != 0 or result.stdout.startswith(b"refused")
    assert os.getpid() > 0 and not sandbox_processes()  # still here, nothing left behind


UNPRIVILEGED_CALLER = r"""
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("sandbox_copy", sys.argv[1])
sb = importlib.util.module_from_spec(spec)
sys.modules["sandbox_copy"] = sb
spec.loader.exec_module(sb)
kind = sb.sandbox_kind(sys.argv[2])
fork_bomb = ("import os\nfor _ in range(200):\n    try:\n        os.fork()\n"
             "    except OSError:\n        break\nprint('x', flush=True)\n")
bomb = sb.run_python(fork_bomb, limits=sb.Limits(wall_s=10, processes=4), kind=kind)
look = sb.run_python("import os\nprint(os.getuid(), *sorted(os.listdir('/')))", kind=kind)
print(json.dumps({"kind": kind, "processes": bomb.stdout.count(b"x"),
                  "look": look.stdout.decode().split()}))
"""


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/setpriv")
                    or not os.path.exists("/usr/bin/python3"),
                    reason="needs root (to become nobody), setpriv and /usr/bin/python3")
def test_a_normal_user_gets_the_same_limits_and_isolation():
    """The non-root code path (bwrap in a user namespace, or the fallback's own uid)."""
    folder = tempfile.mkdtemp()  # pytest's tmp_path sits in a folder only root may enter
    module = os.path.join(folder, "sandbox_copy.py")
    shutil.copy(sandbox.__file__, module)
    os.chmod(folder, 0o755)
    os.chmod(module, 0o644)
    try:
        _run_as_nobody(module)
    finally:
        shutil.rmtree(folder)


def _run_as_nobody(module):
    for kind in (["bwrap"] if BWRAP_PROBLEM is None else []) + ["rlimits"]:
        out = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534",
                              "--clear-groups", "/usr/bin/python3", "-c", UNPRIVILEGED_CALLER,
                              module, kind], capture_output=True, text=True, timeout=60,
                             cwd="/")
        if kind == "bwrap" and "does not work here" in out.stderr:
            pytest.skip("unprivileged user namespaces are off here")
        report = json.loads(out.stdout.splitlines()[-1])
        assert report["kind"] == kind and report["look"][0] == "65534"
        assert 1 <= report["processes"] <= 5  # init + 4 in bwrap's namespace; 4 + caller
        if kind == "bwrap":
            assert "work" not in report["look"] and "root" not in report["look"]
