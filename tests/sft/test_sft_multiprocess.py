"""`r1jax-sft` and `r1jax-dpo` as 2 processes x 2 CPU devices against 1 process x 4 devices
(both fsdp 4): the tiny variants from the command line, the same losses and final parameters
(within 1e-5; the layouts add the same numbers in another order, see
tests/train/test_multiprocess.py, which also says why these jobs use 4 devices, not 8)."""

import os
import sys

import numpy as np
import pytest

from r1jax.metrics import read_metrics
from tests.train.test_multiprocess import TOLERANCE, params, run

BIN = os.path.dirname(sys.executable)
COMMANDS = {
    "sft": (os.path.join(BIN, "r1jax-sft"), "--config=configs/sft/generic.py:tiny",
            "sft/loss"),
    "dpo": (os.path.join(BIN, "r1jax-dpo"), "--config=configs/dpo/light_r1_dpo.py:tiny",
            "--config.dpo.sft_weight=0.5", "loss"),
}
FLAGS = ("--config.mesh.fsdp=4", "--config.train.export_hf=True",
         "--config.train.checkpoint_every=0", "--config.eval.source=None")


@pytest.mark.parametrize("tool", sorted(COMMANDS))
def test_two_processes_equal_one(tool, tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("R1JAX_DATA_DIR", data_dir)
    binary, *config, loss = COMMANDS[tool]
    runs = {}
    for processes in (1, 2):
        runs[processes] = str(tmp_path / f"p{processes}")
        run(runs[processes], processes, *FLAGS, devices=4, command=(binary, *config))
    rows = [[r for r in read_metrics(runs[p]) if loss in r] for p in (1, 2)]
    assert len(rows[0]) == len(rows[1]) == 4
    for a, b in zip(*rows):
        assert b[loss] == pytest.approx(a[loss], rel=TOLERANCE)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=TOLERANCE)
    assert rows[0][0][loss] != rows[0][-1][loss]  # it trained
    one, two = params(runs[1]), params(runs[2])
    for name in one:
        np.testing.assert_allclose(two[name], one[name], rtol=0, atol=TOLERANCE, err_msg=name)
