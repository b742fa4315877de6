"""Test set-up: 8 simulated CPU devices and a persistent compile cache, before jax loads."""

import os

from tests.xla_env import compile_cache_dir, cpu_xla_flags

os.environ.setdefault("XLA_FLAGS", cpu_xla_flags(8))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The persistent compile cache below is shared by the pytest-xdist workers and the command
# lines the tests start. Only with a size limit does JAX lock the directory (filelock) around
# each read and write; without one a process can read an entry another is still writing,
# and XLA aborts deserializing the truncated executable (seen: "Fatal Python error: Aborted"
# in an eager op of a loaded 2-core run). Subprocesses inherit the limit from here.
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 << 30))
# The TPU ahead-of-time tests and r1jax-fit load libtpu for compile-only devices in several
# processes at once (the test workers, fit's spawned process); libtpu's per-host lock file
# would refuse all but one ("Internal error when accessing libtpu multi-process lockfile").
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

# One persistent compile cache for the test processes and every command line they start
# (all inherit these): a program compiled by one test, or by an earlier run, is loaded by the
# others. It sits outside the checkout (tests/xla_env.py), at a fixed path: JAX's cache key
# includes the directory's path (through XLA's GPU cache options), so two directories never
# share entries. JAX keys each entry on the program, the compile options, the devices and the
# jax / jaxlib versions, so a stale entry is never used. The multi-process jobs keep out of
# it (r1jax.distributed: on CPU, process 0 alone would load from it).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", compile_cache_dir())
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import jax  # noqa: E402
import pytest  # noqa: E402

from tests import shared_data  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


@pytest.fixture(scope="session")
def data_dir() -> str:
    """The shared public data (GSM8K, MATH-500, ..., tokenizers); skips when absent."""
    path = shared_data.find()
    if path is None:
        pytest.skip(shared_data.MISSING)
    return path


@pytest.fixture(scope="session")
def qwen_tokenizer_dir(data_dir) -> str:
    return os.path.join(data_dir, "tokenizers", "qwen2.5_derived")


def pytest_collection_modifyitems(session, config, items):
    """The end-to-end training runs first: pytest-xdist hands tests out in this order, so the
    long runs overlap each other and the many short tests fill the workers' tails."""
    items.sort(key=lambda item: 0 if os.sep + "train" + os.sep in str(item.fspath) else 1)
