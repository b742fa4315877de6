"""Bad rows in a corrupted copy of a real file are skipped and counted (or fatal in strict
mode); missing, empty and unreadable files fail at start-up with a clear message."""

import json
import os

import pytest

from r1jax.data import DataError, load_source


@pytest.fixture
def corrupted_math500(data_dir, tmp_path):
    """The first 20 MATH-500 rows with 7 kinds of damage spliced in (and one blank line)."""
    lines = open(os.path.join(data_dir, "math500/test.jsonl"), "rb").read().splitlines()[:20]
    good = [json.loads(line) for line in lines]
    no_answer = dict(good[0])
    del no_answer["answer"]
    damage = [
        b'{"problem": "cut off mid-row", "answer": "1"',                 # bad JSON
        json.dumps(no_answer).encode(),                                   # missing field
        b'{"problem": "caf\xe9 \xff", "answer": "2", "unique_id": "x"}',  # invalid UTF-8
        json.dumps(dict(good[1], problem=12)).encode(),                   # wrong type
        json.dumps(dict(good[2], problem="   ")).encode(),                # empty question
        json.dumps([1, 2, 3]).encode(),                                   # not an object
        json.dumps(dict(good[3], answer=None)).encode(),                  # null answer
        b"   ",                                                           # blank: ignored
    ]
    mixed = lines[:5] + damage + lines[5:]
    path = tmp_path / "math500_corrupted.jsonl"
    path.write_bytes(b"\n".join(mixed) + b"\n")
    return str(path), [g["unique_id"] for g in good]


def test_bad_rows_are_skipped_and_counted(corrupted_math500, caplog):
    path, good_ids = corrupted_math500
    with caplog.at_level("WARNING"):
        source = load_source(path, recipe="math500")
    assert [ex["id"] for ex in source.examples] == good_ids
    assert source.stats.rows == 27 and source.stats.kept == 20
    assert dict(source.stats.skipped) == {"bad_json": 1, "missing_field": 2, "invalid_utf8": 1,
                                          "wrong_type": 1, "empty_question": 1, "not_object": 1}
    # the first five are logged with their line numbers (lines 6.. in the file)
    assert len(source.stats.examples) == 5
    assert source.stats.examples[0].startswith("line 6: bad JSON")
    assert source.stats.examples[2].startswith("line 8: invalid UTF-8")
    assert sum("skipping line" in r.message for r in caplog.records) == 5


def test_strict_mode_stops_at_the_first_bad_row(corrupted_math500):
    path, _ = corrupted_math500
    with pytest.raises(DataError, match=r"line 6: bad JSON"):
        load_source(path, recipe="math500", strict=True)


def test_missing_empty_and_unusable_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_source(str(tmp_path / "nope.jsonl"), recipe="math500")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match=r"no usable rows \(0 read\)"):
        load_source(str(empty), recipe="math500")
    all_bad = tmp_path / "bad.jsonl"
    all_bad.write_text('{"problem": "x"}\n[1]\n')
    with pytest.raises(DataError, match=r"2 read; skipped \{'missing_field': 1, 'not_object': 1\}"):
        load_source(str(all_bad), recipe="math500")
    not_parquet = tmp_path / "broken.parquet"
    not_parquet.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match="not a readable Parquet"):
        load_source(str(not_parquet), recipe="dapo")
    with pytest.raises(DataError, match="unknown dataset format '.csv'"):
        (tmp_path / "data.csv").write_text("a,b\n")
        load_source(str(tmp_path / "data.csv"), recipe="math500")


def test_limit_keeps_the_first_examples(data_dir):
    source = load_source("gsm8k", data_dir=data_dir, limit=7)
    assert [ex["id"] for ex in source.examples] == [f"gsm8k-{i}" for i in range(1, 8)]
