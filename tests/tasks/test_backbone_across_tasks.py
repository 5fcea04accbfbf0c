"""``--init-checkpoint`` with a run of any task starts a run of any task from its backbone (issue 29, item 10):
the backbone's tensors are taken, the rest of the network keeps its initialisation, and one line says so."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from lemevit.data.splits import Split
from lemevit.data.statistics import Normalisation
from lemevit.errors import DataError
from lemevit.io.checkpoint import TASK_KEY
from lemevit.labels import PRESETS
from lemevit.tasks import get_task

NORMALISATION = Normalisation(3, (0.0,) * 3, (1.0,) * 3, "uint8")
META = {"classification": {"class_names": ["a", "b", "c"]}, "detection": {"class_names": ["plane", "ship"]},
        "segmentation": {"labels": PRESETS["potsdam"].to_dict()}, "change": {},
        "panoptic": {"categories": [{"id": 1, "name": "road", "isthing": 0}, {"id": 2, "name": "car", "isthing": 1}]}}
SMALL = {"segmentation": {"decoder_channels": 16}, "detection": {"fpn_channels": 16},
         "panoptic": {"fpn_channels": 16, "box_channels": 16, "mask_channels": 16, "semantic_channels": 16,
                      "semantic_groups": 4}}


def build(task: str, model: str, tmp_path: Path, meta: dict | None = None, **given):
    cls = get_task(task)
    cfg = cls.config(data=str(tmp_path), output=str(tmp_path / "run"), model=model, img_size=64,
                     **SMALL.get(task, {}), **given)
    return cls.from_config(cfg, Split(tmp_path, {"train": ["x"], "val": ["y"]}, meta or META[task]), NORMALISATION)


def backbone(module) -> dict[str, torch.Tensor]:
    prefix = type(module).backbone_prefix
    return {k[len(prefix):].removeprefix("model."): v for k, v in module.state_dict().items() if k.startswith(prefix)}


@pytest.mark.slow
@pytest.mark.parametrize("source", ["detection", "segmentation", "change", "panoptic", "classification"])
def test_a_run_of_any_task_starts_any_task_from_its_backbone(source, tmp_path, caplog):
    torch.manual_seed(0)
    trained = build(source, "lemevit_tiny", tmp_path)
    checkpoint = tmp_path / f"{source}.ckpt"
    torch.save({"state_dict": trained.state_dict(), "hyper_parameters": dict(trained.hparams), TASK_KEY: source},
               checkpoint)
    given = backbone(trained)
    # Into scene recognition (a classifier's norm and head that no dense backbone has) and into a task of another
    # form than the source's own: the mapping is the same for every pair.
    for target in ("classification", "change" if source == "panoptic" else "panoptic"):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            started = build(target, "lemevit_tiny", tmp_path, init_checkpoint=str(checkpoint))
        own = backbone(started)
        shared = [k for k in own if k in given]
        assert shared and all(torch.equal(own[k], given[k]) for k in shared), (source, target)
        lines = [r.getMessage() for r in caplog.records if str(checkpoint) in r.getMessage()]
        assert len(lines) == 1 and f"took {len(shared)} tensors of its backbone" in lines[0], (target, lines)


def test_a_backbone_of_another_architecture_is_still_refused(tmp_path):
    trained = build("segmentation", "resnet10t", tmp_path)
    checkpoint = tmp_path / "seg.ckpt"
    torch.save({"state_dict": trained.state_dict(), "hyper_parameters": dict(trained.hparams),
                TASK_KEY: "segmentation"}, checkpoint)
    with pytest.raises(DataError, match="does not fit LeMeViT"):
        build("classification", "lemevit_tiny", tmp_path, init_checkpoint=str(checkpoint))


def test_a_classifier_of_other_classes_keeps_its_backbone_and_starts_its_head_afresh(tmp_path, caplog):
    trained = build("classification", "resnet10t", tmp_path)
    checkpoint = tmp_path / "cls.ckpt"
    torch.save({"state_dict": trained.state_dict(), "hyper_parameters": dict(trained.hparams),
                TASK_KEY: "classification"}, checkpoint)
    with caplog.at_level(logging.WARNING):
        started = build("classification", "resnet10t", tmp_path, meta={"class_names": list("abcde")},
                        init_checkpoint=str(checkpoint))
    assert torch.equal(started.model.conv1[0].weight, trained.model.conv1[0].weight)
    assert started.model.fc.weight.shape[0] == 5
    assert any("left at initialisation: 2 (fc.weight, fc.bias)" in r.getMessage() for r in caplog.records)
