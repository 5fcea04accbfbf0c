"""Oriented object detection as a Lightning module, and DOTA's mean average precision."""
from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl
import numpy as np
import torch

from lemevit.data.classification import seed_everything_quietly
from lemevit.models.oriented_rcnn import OrientedRCNN
from lemevit.ops.rotated import box_to_quad, convex_quad_iou
from lemevit.tasks.classification import adamw_warmup_cosine
from lemevit.tasks.trainer import TASK_KEY

__all__ = ["DetectionTask", "average_precision", "detection_map"]


def average_precision(recall: np.ndarray, precision: np.ndarray, eleven_point: bool = True) -> float:
    """VOC average precision: the mean of the best precision at recall >= 0, 0.1, ..., 1 (VOC2007's 11 points,
    which DOTA's devkit and mmrotate use for DOTA), or the area under the interpolated curve."""
    if eleven_point:
        return float(np.mean([precision[recall >= t].max() if (recall >= t).any() else 0.0
                              for t in np.linspace(0, 1, 11)]))
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.nonzero(r[1:] != r[:-1])[0]
    return float(((r[steps + 1] - r[steps]) * p[steps + 1]).sum())


def detection_map(detections: Sequence[dict], ground_truths: Sequence[dict], class_names: Sequence[str],
                  iou_threshold: float = 0.5, eleven_point: bool = True) -> dict:
    """DOTA Task-1 evaluation.

    ``detections[i]``: ``quads`` ``(n, 4, 2)``, ``scores``, ``labels`` of image ``i``; ``ground_truths[i]``:
    ``quads``, ``labels``, ``difficult``. Per class, detections of all images are ranked by score; one is a
    true positive when its polygon IoU with an unmatched object of its class in its image is the highest and
    above ``iou_threshold``; a match with a difficult object counts neither way; difficult objects are not
    counted in the recall. ``map50`` averages the classes that have objects.
    """
    per_class = {}
    for c, name in enumerate(class_names):
        scores, hits, used, num_gt, num_det = [], [], [], 0, 0
        for det, gt in zip(detections, ground_truths, strict=True):
            det_mask, gt_mask = np.asarray(det["labels"]) == c, np.asarray(gt["labels"]) == c
            d_quads, d_scores = np.asarray(det["quads"])[det_mask], np.asarray(det["scores"])[det_mask]
            g_quads, difficult = np.asarray(gt["quads"])[gt_mask], np.asarray(gt["difficult"])[gt_mask].astype(bool)
            num_gt += int((~difficult).sum())
            num_det += len(d_scores)
            if len(d_scores) == 0:
                continue
            order = np.argsort(-d_scores, kind="stable")
            d_quads, d_scores = d_quads[order], d_scores[order]
            hit = np.zeros(len(d_scores), bool)
            counted = np.ones(len(d_scores), bool)
            if len(g_quads):
                iou = convex_quad_iou(torch.as_tensor(d_quads, dtype=torch.float64),
                                      torch.as_tensor(g_quads, dtype=torch.float64)).numpy()
                best, match = iou.max(1), iou.argmax(1)
                taken = np.zeros(len(g_quads), bool)
                # Within one image, higher-scored detections claim their object first (sequential by nature).
                for k in np.nonzero(best > iou_threshold)[0]:
                    if difficult[match[k]]:
                        counted[k] = False
                    elif not taken[match[k]]:
                        hit[k] = taken[match[k]] = True
            scores.append(d_scores[counted])
            hits.append(hit[counted])
            used.append(counted.sum())
        if num_gt == 0:
            per_class[name] = {"ap": None, "num_gt": 0, "num_det": num_det}
            continue
        scores = np.concatenate(scores) if scores else np.zeros(0)
        hits = np.concatenate(hits) if hits else np.zeros(0, bool)
        order = np.argsort(-scores, kind="stable")
        tp = np.cumsum(hits[order])
        fp = np.cumsum(~hits[order])
        recall = tp / num_gt
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        ap = average_precision(recall, precision, eleven_point) if len(scores) else 0.0
        per_class[name] = {"ap": ap, "num_gt": num_gt, "num_det": num_det,
                           "recall": float(recall[-1]) if len(recall) else 0.0}
    aps = [v["ap"] for v in per_class.values() if v["ap"] is not None]
    return {"map50": float(np.mean(aps)) if aps else 0.0, "iou_threshold": iou_threshold,
            "ap_method": "voc07_11point" if eleven_point else "area", "per_class": per_class}


class DetectionTask(pl.LightningModule):
    """Trains Oriented R-CNN on image windows; validation reports DOTA mAP50 over the validation windows.

    AdamW (no weight decay on norms and biases) with linear warm-up and cosine decay stepped per batch, the
    usual recipe for transformer backbones in mmrotate configurations. Full images are evaluated window by
    window and merged by :func:`lemevit.tasks.detection_run.evaluate`.
    """

    def __init__(self, model: str, num_classes: int, class_names: Sequence[str] | None = None, in_chans: int = 3,
                 img_size: int = 1024, overlap: int = 200, mean: Sequence[float] = (123.675, 116.28, 103.53),
                 std: Sequence[float] = (58.395, 57.12, 57.375), lr: float = 1e-4, weight_decay: float = 0.05,
                 warmup_epochs: float = 1.0, min_lr_factor: float = 0.01, drop_path_rate: float = 0.1,
                 fpn_channels: int = 256, rpn_proposals: int = 2000, test_proposals: int = 2000,
                 init_checkpoint: str | None = None, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.detector = OrientedRCNN(model, num_classes, in_chans=in_chans, fpn_channels=fpn_channels,
                                     drop_path_rate=drop_path_rate, backbone_checkpoint=init_checkpoint,
                                     rpn_proposals=rpn_proposals, test_proposals=test_proposals)
        self._val_detections: list[dict] = []
        self._val_truths: list[dict] = []

    def forward(self, images: torch.Tensor) -> list[dict]:
        return self.detector(images)

    def on_train_epoch_start(self) -> None:
        seed_everything_quietly((self.hparams.seed * 1_000_003 + self.current_epoch * 7919 + self.global_rank + 1)
                                % 2**32)

    def training_step(self, batch: tuple[torch.Tensor, list[dict]], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses = self.detector(images, targets)
        loss = sum(losses.values())
        n = images.shape[0]
        for name, value in losses.items():
            self.log(f"train/{name}", value, on_step=True, on_epoch=True, batch_size=n)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=n)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_detections, self._val_truths = [], []

    def validation_step(self, batch: tuple[torch.Tensor, list[dict]], batch_idx: int) -> None:
        images, targets = batch
        for det, target in zip(self(images), targets, strict=True):
            self._val_detections.append({"quads": box_to_quad(det["boxes"]).cpu().numpy(),
                                         "scores": det["scores"].cpu().numpy(), "labels": det["labels"].cpu().numpy()})
            self._val_truths.append({"quads": box_to_quad(target["boxes"]).cpu().numpy(),
                                     "labels": target["labels"].cpu().numpy(),
                                     "difficult": target["difficult"].cpu().numpy()})

    def on_validation_epoch_end(self) -> None:
        names = self.hparams.class_names or [str(i) for i in range(self.hparams.num_classes)]
        metrics = detection_map(self._val_detections, self._val_truths, names)
        self.log("val/map50", metrics["map50"], prog_bar=True, sync_dist=True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[TASK_KEY] = "detection"

    def configure_optimizers(self):
        return adamw_warmup_cosine(self, self.detector)
