"""Semantic segmentation as a Lightning module, and its metrics (OA, IoU, F1 from a confusion matrix)."""
from __future__ import annotations

import math
from collections.abc import Sequence

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from lemevit.data.classification import seed_everything_quietly
from lemevit.data.segmentation import IGNORE_INDEX, LabelScheme
from lemevit.models.segmentation import SegmentationModel
from lemevit.predict_scene import blended_strips
from lemevit.tasks.classification import adamw_warmup_cosine
from lemevit.tasks.trainer import TASK_KEY

__all__ = ["SegmentationTask", "WholeImageEvaluation", "confusion_matrix", "dice_loss", "segmentation_metrics",
           "tile_confusion"]


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(K, K)`` int64 pixel counts, rows the true class and columns the predicted one; pixels whose target
    is ``IGNORE_INDEX`` are left out."""
    keep = target != IGNORE_INDEX
    pairs = target[keep].long() * num_classes + pred[keep].long()
    return torch.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def segmentation_metrics(confusion: torch.Tensor, class_names: Sequence[str]) -> dict:
    """OA, mIoU, mF1, per-class IoU/F1/precision/recall/support and the confusion matrix.

    A class that is neither in the ground truth nor predicted has no IoU or F1 (null): the means are over the
    classes that have them, as mmsegmentation's ``nanmean``.
    """
    confusion = confusion.double()
    tp = confusion.diag()
    true_total, pred_total = confusion.sum(dim=1), confusion.sum(dim=0)
    union = true_total + pred_total - tp

    def ratio(num: torch.Tensor, den: torch.Tensor) -> list[float | None]:
        return [float(n / d) if d > 0 else None for n, d in zip(num, den, strict=True)]

    iou, f1 = ratio(tp, union), ratio(2 * tp, true_total + pred_total)
    precision, recall = ratio(tp, pred_total), ratio(tp, true_total)
    total = float(confusion.sum())

    def mean(values: list[float | None]) -> float:
        defined = [v for v in values if v is not None]
        return sum(defined) / len(defined) if defined else math.nan

    return {
        "oa": float(tp.sum() / total) if total else math.nan,
        "miou": mean(iou),
        "mf1": mean(f1),
        "num_pixels": int(total),
        "per_class": {name: {"iou": iou[i], "f1": f1[i], "precision": precision[i], "recall": recall[i],
                             "support": int(true_total[i])} for i, name in enumerate(class_names)},
        "class_names": list(class_names),
        "confusion_matrix": confusion.long().tolist(),
    }


def tile_confusion(model: torch.nn.Module, image: torch.Tensor, target: torch.Tensor, num_classes: int,
                   window: int, stride: int, batch_size: int = 8) -> torch.Tensor:
    """Confusion matrix of one normalised tile ``(C, H, W)`` against its target ``(H, W)``, predicted by a
    blended sliding window strip by strip (the tile's probabilities are never held whole)."""
    device = next(model.parameters()).device
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)

    def predict(x: torch.Tensor) -> torch.Tensor:
        return model(x.to(device)).softmax(dim=1).cpu()

    for top, probs in blended_strips(lambda a, b: image[:, a:b].cpu(), image.shape[1], image.shape[2], predict,
                                     window, stride, batch_size):
        confusion += confusion_matrix(probs.argmax(dim=0), target[top:top + probs.shape[1]].cpu(), num_classes)
    return confusion


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """One minus the soft Dice coefficient of the softmax, averaged over the classes present in ``target``
    ``(B, H, W)``; pixels whose target is ``IGNORE_INDEX`` are left out. Unlike cross-entropy, a class
    weighs the same however few pixels it covers."""
    num_classes = logits.shape[1]
    keep = target != IGNORE_INDEX
    probs = logits.float().softmax(dim=1)
    classes = target[keep]
    # Summed by class index rather than through a one-hot target: no (B, K, H, W) copies in the training step.
    own = probs.gather(1, target.masked_fill(~keep, 0).unsqueeze(1)).squeeze(1)[keep]
    intersection = own.new_zeros(num_classes).index_add(0, classes, own)
    support = torch.bincount(classes, minlength=num_classes).to(own.dtype)
    predicted = torch.einsum("bkhw,bhw->k", probs, keep.to(probs.dtype))
    dice = 2 * intersection / (predicted + support).clamp_min(1e-6)
    present = support > 0
    return 1 - dice[present].mean() if present.any() else logits.sum() * 0


class WholeImageEvaluation:
    """Validation and test of a Lightning module that scores whole images (tiles, pairs) by sliding window,
    one per batch: the task supplies ``_start_evaluation()``, ``_evaluate(batch)`` and
    ``_finish_evaluation(stage)``, which logs ``stage/<metric>``."""

    def on_validation_epoch_start(self) -> None:
        self._start_evaluation()

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch)

    def on_validation_epoch_end(self) -> None:
        self._finish_evaluation("val")

    def on_test_epoch_start(self) -> None:
        self._start_evaluation()

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch)

    def on_test_epoch_end(self) -> None:
        self._finish_evaluation("test")


class SegmentationTask(WholeImageEvaluation, pl.LightningModule):
    """Trains and evaluates a :class:`~lemevit.models.segmentation.SegmentationModel`.

    Cross-entropy ignoring unlabelled pixels, plus ``dice_weight`` times the Dice loss (which lifts classes of
    few pixels), plus ``aux_weight`` times the cross-entropy of the auxiliary head; AdamW
    (no weight decay on norms, biases and the backbone's ``no_weight_decay`` parameters), warm-up then cosine
    schedule per batch. Validation predicts each whole validation tile with the blended sliding window
    (``window``, default ``img_size``; ``stride``, default three quarters of it) and logs ``val/miou``,
    ``val/oa`` and ``val/mf1`` over all of them.
    """

    def __init__(
        self,
        model: str,
        labels: dict,
        head: str = "upernet",
        decoder_channels: int | None = None,
        aux_weight: float = 0.4,
        dice_weight: float = 0.0,
        in_chans: int = 3,
        img_size: int = 512,
        window: int | None = None,
        stride: int | None = None,
        mean: Sequence[float] = (123.675, 116.28, 103.53),
        std: Sequence[float] = (58.395, 57.12, 57.375),
        lr: float = 4e-4,
        weight_decay: float = 0.01,
        warmup_epochs: float = 1.0,
        min_lr_factor: float = 0.01,
        drop_path_rate: float = 0.1,
        init_checkpoint: str | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.labels = LabelScheme.from_dict(labels)
        # The published setting: windows of the training crop size, overlapping by a quarter (512 / 384).
        self.window = window or img_size
        self.stride = stride or max(1, self.window * 3 // 4)
        self.net = SegmentationModel(model, head, self.labels.num_classes, in_chans=in_chans,
                                     decoder_channels=decoder_channels, aux_head=aux_weight > 0,
                                     drop_path_rate=drop_path_rate, backbone_checkpoint=init_checkpoint)
        self._confusion = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_train_epoch_start(self) -> None:
        seed_everything_quietly((self.hparams.seed * 1_000_003 + self.current_epoch * 7919 + self.global_rank + 1)
                                % 2**32)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        out = self.net(x)
        logits, aux = out if isinstance(out, tuple) else (out, None)
        loss = F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX)
        if self.hparams.dice_weight:
            loss = loss + self.hparams.dice_weight * dice_loss(logits, y)
        if aux is not None:
            loss = loss + self.hparams.aux_weight * F.cross_entropy(aux, y, ignore_index=IGNORE_INDEX)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=x.shape[0])
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def _start_evaluation(self) -> None:
        n = self.labels.num_classes
        self._confusion = torch.zeros(n, n, dtype=torch.long)

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        for image, target in zip(*batch, strict=True):
            self._confusion += tile_confusion(self.net, image, target, self.labels.num_classes,
                                              self.window, self.stride)

    def _finish_evaluation(self, stage: str) -> None:
        confusion = self.trainer.strategy.reduce(self._confusion.to(self.device), reduce_op="sum").cpu()
        metrics = segmentation_metrics(confusion, self.labels.class_names)
        for key in ("miou", "oa", "mf1"):
            self.log(f"{stage}/{key}", metrics[key], prog_bar=key == "miou", sync_dist=False)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[TASK_KEY] = "segmentation"

    def configure_optimizers(self):
        return adamw_warmup_cosine(self, self.net)
