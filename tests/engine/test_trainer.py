"""The run's CSV log: continued by a resume, trimmed to the checkpoint, never left truncated."""
from __future__ import annotations

import csv

from lemevit.engine.trainer import ContinuedCSVLogger


def read_rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_resumed_csv_log_keeps_the_rows_up_to_the_checkpoint_and_adds_columns_to_them(tmp_path):
    first = ContinuedCSVLogger(tmp_path, name="logs", version="")
    for step in range(10):
        first.log_metrics({"epoch": step // 5, "train/loss": 1.0 / (step + 1)}, step=step)
        first.save()
    path = tmp_path / "logs" / "metrics.csv"
    assert len(read_rows(path)) == 10

    # killed after step 9; the checkpoint it resumes from was written at step 6
    resumed = ContinuedCSVLogger(tmp_path, name="logs", version="")
    resumed.experiment.drop_steps_from(6)
    resumed.log_metrics({"epoch": 1, "val/miou": 0.5}, step=6)
    resumed.save()
    rows = read_rows(path)
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3, 4, 5, 6]
    assert rows[0]["train/loss"] == "1.0" and rows[0]["val/miou"] == "" and rows[-1]["val/miou"] == "0.5"
