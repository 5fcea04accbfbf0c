"""Splits of every task: the seeded, path-hashed split and the versioned split file a run keeps."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from lemevit.data import Sample, load_split, save_split
from lemevit.data.splits import Split, hashed_split
from lemevit.errors import ConfigError, DataError


def split(samples, fraction, seed):
    return hashed_split(samples, fraction, seed, key=lambda s: s.path, group=lambda s: s.label)


def _samples(counts: dict[str, int]) -> list[Sample]:
    return [Sample(f"{name}/{name.lower()}_{i}.jpg", label)
            for label, (name, n) in enumerate(sorted(counts.items())) for i in range(n)]


def _by_class(samples: list[Sample]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for s in samples:
        out.setdefault(s.label, []).append(s.path)
    return out


def test_the_split_is_stable_and_stratified():
    counts = {"Airport": 20, "Beach": 7, "Forest": 2, "Port": 1}
    samples = _samples(counts)
    a = split(samples, 0.8, seed=3)
    assert a == split(samples, 0.8, seed=3)
    shuffled = samples[:]
    random.Random(1).shuffle(shuffled)
    assert split(shuffled, 0.8, seed=3) == a
    assert split(samples, 0.8, seed=4) != a

    train, val = _by_class(a["train"]), _by_class(a["val"])
    assert sorted(s.path for s in a["train"] + a["val"]) == sorted(s.path for s in samples)
    assert set(train) == {0, 1, 2, 3} and set(val) == {0, 1, 2}  # a one-image class is training-only
    assert (len(train[0]), len(val[0])) == (16, 4)
    assert (len(train[2]), len(val[2])) == (1, 1)
    assert [s.path for s in a["train"]] == sorted(s.path for s in a["train"])

    # A new image in one class leaves every other class's assignment as it was.
    grown = samples + [Sample("Beach/beach_new.jpg", 1)]
    b = split(grown, 0.8, seed=3)
    for label in (0, 2, 3):
        assert _by_class(b["train"]).get(label) == train.get(label)
        assert _by_class(b["val"]).get(label) == val.get(label)


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5, -0.1])
def test_the_split_rejects_a_fraction_that_holds_nothing_out(fraction):
    with pytest.raises(ConfigError, match="split: the fraction"):
        split(_samples({"A": 4}), fraction, seed=0)


def test_a_split_file_round_trips_with_an_absolute_root_and_names_what_is_wrong(tmp_path, monkeypatch):
    root = tmp_path / "data"
    root.mkdir()
    subsets = split(_samples({"Airport": 5, "Beach": 4}), 0.5, seed=0)
    subsets["test"] = [Sample("Beach/extra.jpg", 1)]
    path = tmp_path / "out" / "split.json"
    monkeypatch.chdir(tmp_path)
    save_split(path, "classification", Split(Path("data"), subsets, {"class_names": ["Airport", "Beach"]}))
    doc = json.loads(path.read_text())
    assert doc["root"] == str(root) and doc["task"] == "classification" and doc["version"] == 2
    monkeypatch.chdir("/")  # the stored root does not depend on the working directory
    loaded = load_split(path, "classification", Sample)
    assert (loaded.root, loaded.subsets, loaded.meta) == (root, subsets, {"class_names": ["Airport", "Beach"]})
    assert [p.name for p in path.parent.iterdir()] == ["split.json"]  # no temporary file left behind

    with pytest.raises(DataError, match=r"split\.json is a split of a 'classification' run, not of a 'change' one"):
        load_split(path, "change", Sample)
    moved = tmp_path / "moved"
    with pytest.raises(DataError, match=r"the data folder .*moved of .*split\.json is not there"):
        load_split(path, "classification", Sample, root=moved)
    path.write_text(path.read_text()[:50])
    with pytest.raises(DataError, match=r"split\.json is not valid JSON"):
        load_split(path, "classification", Sample)
    path.write_text(json.dumps({"format": "lemevit-split", "version": 2, "task": "classification", "root": str(root),
                                "splits": {"train": [{"path": "A/a.jpg", "label": "3"}]}}))
    with pytest.raises(DataError, match=r"subset \"train\", entry 0: 'label' must be a int"):
        load_split(path, "classification", Sample)
    path.write_text(json.dumps({"format": "lemevit-split", "version": 1, "root": "r", "splits": {}}))
    with pytest.raises(DataError, match="version 1"):
        load_split(path, "classification", Sample)
    with pytest.raises(DataError, match="absent.json"):
        load_split(tmp_path / "absent.json", "classification", Sample)
