"""dfl.records: every record kind's keys, checked against the golden corpus of real runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dfl.records import REQUIRED, record_errors

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def test_every_golden_record_carries_its_kinds_keys() -> None:
    kinds = set()
    for f in sorted(GOLDEN.glob("*.jsonl")):
        for i, line in enumerate(f.read_text().splitlines()):
            record = json.loads(line)
            kinds.add(record["kind"])
            assert record_errors(record) == [], f"{f.name}:{i + 1}"
    assert kinds >= set(REQUIRED) - {"fault"}  # the corpus has no fault; tests/test_faults.py checks those


@pytest.mark.parametrize(("record", "errors"), [
    ({"round": 1, "node": 0, "kind": "train", "loss": 0.1}, ["steps"]),
    ({"round": 1, "kind": "eval", "train_acc": 1.0, "train_loss": 0.0}, ["node", "holdout_acc", "holdout_loss",
                                                                          "test_acc", "test_loss"]),
    ({"round": 1, "node": None, "kind": "gossip"}, ["unknown kind 'gossip'; known kinds: train, eval, round, mia, dp_audit, "
                                                    "inversion, defense, fault"]),
])
def test_a_record_missing_keys_is_named(record: dict, errors: list[str]) -> None:
    assert record_errors(record) == errors


def test_eval_keys_follow_the_configured_splits() -> None:
    record = {"round": 2, "node": 1, "kind": "eval", "test_acc": 0.5, "test_loss": 1.0}
    assert record_errors(record, splits=("test",)) == []
    assert record_errors(record) == ["train_acc", "train_loss", "holdout_acc", "holdout_loss"]
