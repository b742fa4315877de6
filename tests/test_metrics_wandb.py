"""The optional Weights & Biases sink of MetricsWriter, in offline mode (no network).

An offline W&B run is a transaction log `run_dir/wandb/offline-run-*/run-<id>.wandb`: W&B's
LevelDB-style log format (32 KiB blocks of [crc32, length, type] records) holding protobuf
`Record`s of wandb's own schema (wandb.proto.wandb_internal_pb2). The test reads it back
with that schema and compares with what it wrote.
"""

import glob
import json
import os
import struct
import sys
import time

import pytest

from r1jax.metrics import MetricsWriter

wandb = pytest.importorskip("wandb")
from google.protobuf.message import DecodeError  # noqa: E402  (wandb depends on protobuf)

BLOCK = 32768
HEADER = 7  # "<IHB": crc32, length, record type; the file starts with "<4sHB" = :W&B, magic


@pytest.fixture(autouse=True)
def wandb_offline_env(tmp_path, monkeypatch):
    """Offline mode, and every W&B directory (settings, cache, data) inside tmp_path."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for var, sub in (("WANDB_DIR", "wandb_dir"), ("WANDB_CONFIG_DIR", "wandb_config"),
                     ("WANDB_CACHE_DIR", "wandb_cache"), ("WANDB_DATA_DIR", "wandb_data")):
        monkeypatch.setenv(var, str(tmp_path / sub))


def wandb_records(path):
    """The protobuf Records of a .wandb transaction log, in order."""
    from wandb.proto import wandb_internal_pb2
    data = open(path, "rb").read()
    ident, magic, _ = struct.unpack("<4sHB", data[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1)
    pos, pieces = 7, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if left < HEADER or (kind == 0 and length == 0):  # block padding
            pos += left
            continue
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        pieces = chunk if kind in (1, 2) else pieces + chunk  # full/first, middle/last
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            yield record


def finished_records(path, timeout_s=60.0):
    """The Records of a run's log once its final `exit` record is on disk.

    wandb's finish() can return before its service process has flushed the log (the rest
    lands within moments, at the latest when the service exits).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            records = list(wandb_records(path))
        except DecodeError:  # a record still being written
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        assert time.monotonic() < deadline, f"no exit record in {path}"
        time.sleep(0.1)


def read_offline_run(run_dir):
    """(history rows {step: {name: value}}, config dict, run record) of the one offline run."""
    files = glob.glob(os.path.join(run_dir, "wandb", "offline-run-*", "run-*.wandb"))
    assert len(files) == 1, files
    history, config, run = {}, {}, None
    for record in finished_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = {"/".join(item.nested_key) or item.key: json.loads(item.value_json)
                   for item in record.history.item}
            history.setdefault(row["_step"], {}).update(
                {k: v for k, v in row.items() if not k.startswith("_")})
        elif kind in ("run", "config"):
            updates = record.run.config.update if kind == "run" else record.config.update
            config.update({u.key: json.loads(u.value_json) for u in updates})
            run = record.run if kind == "run" else run
    return history, config, run


def test_offline_run_holds_the_metrics_and_config(tmp_path):
    run_dir = str(tmp_path / "run")
    config = {"algo": {"eps_low": 0.2, "eps_high": 0.28, "clip_c": None},
              "train": {"steps": 3, "wandb_project": "r1jax-test"}}
    writer = MetricsWriter(run_dir, total_steps=3, tensorboard=False, progress_bar=False,
                           wandb_project="r1jax-test", wandb_mode="offline",
                           wandb_run_name="cli-test", config=config)
    steps = {1: {"reward/mean": 0.25, "policy/loss": -1.5, "batch/rows": 16},
             2: {"reward/mean": 0.625, "policy/loss": 0.125, "batch/rows": 32}}
    for step, metrics in steps.items():
        writer.write(step, metrics)
    writer.write(2, {"eval/pass@1": 0.75, "eval/problems": 8}, advance=False)
    writer.write(3, {"reward/mean": float("nan"), "note": "not a scalar"})
    writer.close()

    history, logged_config, run = read_offline_run(run_dir)
    assert history[1] == {"reward/mean": 0.25, "policy/loss": -1.5, "batch/rows": 16}
    assert history[2] == {"reward/mean": 0.625, "policy/loss": 0.125, "batch/rows": 32,
                          "eval/pass@1": 0.75, "eval/problems": 8}
    assert set(history[3]) == {"reward/mean"}  # NaN is logged; non-scalars are not
    assert logged_config["algo"] == config["algo"]
    assert logged_config["train"] == config["train"]
    assert (run.project, run.display_name) == ("r1jax-test", "cli-test")
    # The same scalars went to metrics.jsonl.
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    assert rows[0] == {"step": 1, **steps[1]}


@pytest.mark.parametrize("kwargs", [{}, {"wandb_project": "p", "wandb_mode": "disabled"},
                                    {"wandb_project": "p", "process_index": 1}],
                         ids=["no_project", "disabled", "not_process_0"])
def test_no_wandb_run_unless_asked_on_process_0(tmp_path, kwargs):
    writer = MetricsWriter(str(tmp_path / "run"), total_steps=1, tensorboard=False,
                           progress_bar=False, **kwargs)
    writer.write(1, {"reward/mean": 1.0})
    writer.close()
    assert writer._wandb is None
    # Process 0 writes metrics.jsonl; another process of a multi-host job writes nothing.
    written = [] if kwargs.get("process_index") else ["metrics.jsonl"]
    assert os.listdir(tmp_path / "run") == written
    assert not os.path.exists(tmp_path / "wandb_dir")


def test_missing_wandb_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'r1jax\[wandb\]'"):
        MetricsWriter(str(tmp_path / "run"), total_steps=1, tensorboard=False,
                      progress_bar=False, wandb_project="p")
    MetricsWriter(str(tmp_path / "run2"), total_steps=1, tensorboard=False,
                  progress_bar=False).close()  # without a project wandb is never imported
