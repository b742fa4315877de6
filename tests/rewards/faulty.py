"""Reward functions that misbehave on purpose; RewardPool workers import them by name."""

import os
import signal
import sys

from r1jax.rewards.functions import REWARD_FUNCTIONS


def misbehave(completion, example, length):
    """1.0 normally; hangs, crashes, raises, returns NaN or over-allocates on a keyword."""
    if "HANG" in completion:
        while True:          # pure-Python busy loop: only a kill stops it
            pass
    if "SEGV" in completion:
        os.kill(os.getpid(), signal.SIGSEGV)
    if "EXIT" in completion:
        os._exit(3)
    if "RAISE" in completion:
        raise RuntimeError("bad reward")
    if "NAN" in completion:
        return float("nan")
    if "HOG" in completion:
        return float(len(bytearray(64 * 2**30)))   # over the worker's memory limit
    return 1.0


def echo_length(completion, example, length):
    return float(length)


def heavy_modules_loaded(completion, example, length):
    """Number of JAX / Flax / r1jax.models modules imported in this worker."""
    return float(sum(m in sys.modules for m in ("jax", "flax", "r1jax.models")))


FUNCTIONS = dict(REWARD_FUNCTIONS, misbehave=misbehave, echo_length=echo_length,
                 heavy_modules_loaded=heavy_modules_loaded)
