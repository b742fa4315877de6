"""XLA_FLAGS and the compile cache of the CPU test processes (tests/conftest.py and the
command lines tests start).

`devices` simulated host devices. On CPU every collective is a rendezvous of one thread per
device, and XLA aborts the process ("Fatal Python error: Aborted" from AwaitAndLogIfStuck)
when a participant has not arrived within a terminate timeout. On a 2-core machine running
two test workers and their subprocesses, a participant can wait that long for a core, so
the tests raise the terminate timeout to 10 minutes: far above any collective's wait for a
core, while a real deadlock still ends that test (not the whole run) with XLA's message.
"""

import os

COLLECTIVE_TIMEOUTS = ("--xla_cpu_collective_call_warn_stuck_timeout_seconds=120 "
                       "--xla_cpu_collective_call_terminate_timeout_seconds=600")


def cpu_xla_flags(devices: int = 8) -> str:
    return f"--xla_force_host_platform_device_count={devices} {COLLECTIVE_TIMEOUTS}"


def compile_cache_dir() -> str:
    """The tests' persistent compile cache: $R1JAX_TEST_COMPILE_CACHE, else
    $XDG_CACHE_HOME/r1jax/jax-tests (~/.cache/r1jax/jax-tests), outside the checkout so
    that a fresh clone on the same machine finds the programs an earlier run compiled."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get("R1JAX_TEST_COMPILE_CACHE") or os.path.join(base, "r1jax", "jax-tests")
