"""Our backbones in torchgeo's trainers, by name: ClassificationTask through timm.create_model, SemanticSegmentationTask
through segmentation_models_pytorch's timm universal encoder (``tu-NAME``). Tiny random images, a couple of steps;
and the README's torchgeo code as printed, but for the length of its training."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from timm.models import adapt_input_conv
from torch.utils.data import DataLoader, Dataset

from lemevit.models.pretrained import pretrained_state_dict

torchgeo_trainers = pytest.importorskip("torchgeo.trainers", reason='torchgeo is in the "interop" extra')
lightning = pytest.importorskip("lightning")

BANDS = 13  # Sentinel-2
ROOT = Path(__file__).parents[2]


class RandomSamples(Dataset):
    """torchgeo's sample dicts: ``image`` and a ``label`` (a class) or a ``mask`` (a class per pixel)."""

    def __init__(self, target: str, num_classes: int, size: int = 64, length: int = 4):
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(length, BANDS, size, size, generator=generator)
        shape = (length,) if target == "label" else (length, size, size)
        self.targets = torch.randint(num_classes, shape, generator=generator)
        self.target = target

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index], self.target: self.targets[index]}


def _fit_two_steps(task, data: Dataset, tmp_path) -> None:
    loader = DataLoader(data, batch_size=2)
    trainer = lightning.Trainer(accelerator="cpu", fast_dev_run=2, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(task, train_dataloaders=loader, val_dataloaders=loader)
    assert trainer.global_step == 2


def _trained(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    return {name for name, p in module.named_parameters() if not torch.equal(p.detach(), before[name])}


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


@pytest.mark.slow
def test_classification_task_trains_lemevit_tiny_on_thirteen_bands(tmp_path):
    task = torchgeo_trainers.ClassificationTask(model="lemevit_tiny", in_channels=BANDS, num_classes=4, lr=1e-3)
    assert task.model.stem.conv1.in_channels == BANDS and task.model.get_classifier().out_features == 4
    before = _snapshot(task.model)
    _fit_two_steps(task, RandomSamples("label", num_classes=4), tmp_path)
    trained = _trained(before, task.model)
    assert {"stem.conv1.weight", "stages.4.blocks.1.attn.qkv.weight", "head.weight"} <= trained


@pytest.mark.slow
def test_upernet_over_lemevit_tiny_trains_in_semantic_segmentation_task(tmp_path):
    task = torchgeo_trainers.SemanticSegmentationTask(model="upernet", backbone="tu-lemevit_tiny", in_channels=BANDS,
                                                      num_classes=3, lr=1e-3)
    # smp reads the maps of stages 1..4 through timm's features_only model.
    assert task.model.encoder.out_channels[-4:] == [64, 128, 192, 320]
    before = _snapshot(task.model)
    _fit_two_steps(task, RandomSamples("mask", num_classes=3), tmp_path)
    trained = _trained(before, task.model)
    assert any(name.startswith("encoder.model.model.stem.") for name in trained)
    assert any(name.startswith("decoder.") for name in trained)


def test_tagged_weights_load_by_name_with_the_stem_adapted_to_thirteen_bands():
    state = pretrained_state_dict("lemevit_tiny.aid150")
    stem = adapt_input_conv(BANDS, state["stem.conv1.weight"].float())
    block = state["stages.3.blocks.0.mlp.fc1.weight"].float()

    classifier = torchgeo_trainers.ClassificationTask(model="lemevit_tiny.aid150", weights=True, in_channels=BANDS,
                                                      num_classes=10).model
    torch.testing.assert_close(classifier.stem.conv1.weight, stem)
    torch.testing.assert_close(classifier.stages[3].blocks[0].mlp.fc1.weight, block)
    assert classifier.get_classifier().out_features == 10  # AID's 30-class head left out

    encoder = torchgeo_trainers.SemanticSegmentationTask(model="upernet", backbone="tu-lemevit_tiny.aid150",
                                                         weights=True, in_channels=BANDS, num_classes=6).model.encoder
    backbone = encoder.model.model
    torch.testing.assert_close(backbone.stem.conv1.weight, stem)
    torch.testing.assert_close(backbone.stages[3].blocks[0].mlp.fc1.weight, block)


@pytest.mark.parametrize("name", ["lemevit_tiny", "lvt", "vvt_tiny"])
def test_freeze_backbone_trains_the_whole_classifier_only(name):
    task = torchgeo_trainers.ClassificationTask(model=name, in_channels=BANDS, num_classes=4, freeze_backbone=True)
    classifier = task.model.pretrained_cfg["classifier"]
    heads = (classifier,) if isinstance(classifier, str) else classifier
    trainable = {n for n, p in task.model.named_parameters() if p.requires_grad}
    assert trainable == {f"{head}.{p}" for head in heads for p in ("weight", "bias")}


def readme_torchgeo_code() -> str:
    """The Python block of the README's "torchgeo and TerraTorch" section."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### torchgeo and TerraTorch"):]
    section = section[:section.index("\n### ")]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    return code


@pytest.mark.slow
def test_the_readme_s_torchgeo_code_fine_tunes_the_aid_weights_and_builds_the_segmentation_task(tmp_path,
                                                                                                 monkeypatch):
    code = readme_torchgeo_code()
    # The one change to the README's code: its two epochs of 18 batches of 16 scenes become two epochs of one batch
    # of 2 (and of one batch of validation), in a folder of the test's.
    substitutions = {
        'Trainer(max_epochs=2, default_root_dir="runs/torchgeo_aid")':
            f"Trainer(max_epochs=2, limit_train_batches=1, limit_val_batches=1, default_root_dir={str(tmp_path)!r})",
        "batch_size=16": "batch_size=2",
    }
    for printed, used in substitutions.items():
        assert printed in code, f"the README's torchgeo code no longer has {printed}"
        code = code.replace(printed, used)
    monkeypatch.chdir(ROOT)  # its data path is the repository's
    namespace: dict = {}
    exec(compile(code, "README.md (torchgeo)", "exec"), namespace)

    (checkpoint,) = tmp_path.rglob("*.ckpt")
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 2 and saved["hyper_parameters"]["model"] == "lemevit_tiny.aid150"
    pretrained = pretrained_state_dict("lemevit_tiny.aid150")["stages.3.blocks.0.mlp.fc1.weight"].float()
    tuned = saved["state_dict"]["model.stages.3.blocks.0.mlp.fc1.weight"]
    # Started from the AID weights, moved by two AdamW steps of lr 1e-4.
    assert 0 < (tuned - pretrained).abs().max() < 1e-3
    assert saved["state_dict"]["model.head.weight"].shape == (30, 320)
    segmentation = namespace["task"]
    assert isinstance(segmentation, torchgeo_trainers.SemanticSegmentationTask)
    stem = segmentation.model.encoder.model.model.stem.conv1
    assert stem.in_channels == BANDS
