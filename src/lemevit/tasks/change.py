"""Change detection as a Lightning module, and its metrics (precision, recall, F1, IoU of the change class, OA)."""
from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from lemevit.data.change import IGNORE_INDEX
from lemevit.data.classification import seed_everything_quietly
from lemevit.models.change import StackedPair, create_change_model
from lemevit.tasks.classification import adamw_warmup_cosine
from lemevit.tasks.segmentation import WholeImageEvaluation, segmentation_metrics, tile_confusion
from lemevit.tasks.trainer import TASK_KEY

__all__ = ["CLASS_NAMES", "ChangeTask", "change_metrics", "pair_confusion"]

CLASS_NAMES = ("no change", "change")


def change_metrics(confusion: torch.Tensor) -> dict:
    """Precision, recall, F1 and IoU of the change class and the overall accuracy, from the ``(2, 2)``
    pixel confusion matrix (rows: true, columns: predicted; class 1 = change).

    A value whose denominator is zero (no change in the ground truth nor in the prediction, say) is None.
    """
    metrics = segmentation_metrics(confusion, CLASS_NAMES)
    change = metrics["per_class"]["change"]
    return {key: change[key] for key in ("precision", "recall", "f1", "iou")} | {
        "oa": metrics["oa"],
        "num_pixels": metrics["num_pixels"],
        "changed_pixels": change["support"],
        "no_change": metrics["per_class"]["no change"],
        "confusion_matrix": metrics["confusion_matrix"],
        "class_names": list(CLASS_NAMES),
    }


def pair_confusion(net: torch.nn.Module, a: torch.Tensor, b: torch.Tensor, target: torch.Tensor, window: int,
                   stride: int, batch_size: int = 8) -> torch.Tensor:
    """``(2, 2)`` confusion matrix of one normalised pair ``(C, H, W)`` × 2 against its mask ``(H, W)``,
    predicted by the blended sliding window of segmentation, strip by strip."""
    return tile_confusion(StackedPair(net), torch.cat([a, b]), target, len(CLASS_NAMES), window, stride, batch_size)


class ChangeTask(WholeImageEvaluation, pl.LightningModule):
    """Trains and evaluates a change network (:func:`~lemevit.models.change.create_change_model`).

    Cross-entropy over no change / change, ignoring padding; AdamW (no weight decay on norms, biases,
    BIT's positional embedding and the backbone's ``no_weight_decay`` parameters), warm-up then cosine
    schedule per batch. Validation predicts each whole validation pair by sliding window (``window``,
    default ``img_size``; ``stride``, default three quarters of it) and logs ``val/f1``, ``val/iou``,
    ``val/precision``, ``val/recall`` (change class) and ``val/oa`` over all of them.
    """

    def __init__(
        self,
        model: str = "lemevit_tiny",
        head: str = "bit",
        in_chans: int = 3,
        img_size: int = 256,
        window: int | None = None,
        stride: int | None = None,
        mean: Sequence[float] = (123.675, 116.28, 103.53),
        std: Sequence[float] = (58.395, 57.12, 57.375),
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_epochs: float = 1.0,
        min_lr_factor: float = 0.01,
        drop_path_rate: float = 0.0,
        init_checkpoint: str | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.window = window or img_size
        self.stride = stride or max(1, self.window * 3 // 4)
        self.net = create_change_model(head, model, in_chans=in_chans, checkpoint=init_checkpoint,
                                       drop_path_rate=drop_path_rate)
        self._confusion = None

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.net(a, b)

    def on_train_epoch_start(self) -> None:
        seed_everything_quietly((self.hparams.seed * 1_000_003 + self.current_epoch * 7919 + self.global_rank + 1)
                                % 2**32)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        a, b, target = batch
        loss = F.cross_entropy(self.net(a, b), target, ignore_index=IGNORE_INDEX)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=a.shape[0])
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def _start_evaluation(self) -> None:
        self._confusion = torch.zeros(2, 2, dtype=torch.long)

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
        for a, b, target in zip(*batch, strict=True):
            self._confusion += pair_confusion(self.net, a, b, target, self.window, self.stride)

    def _finish_evaluation(self, stage: str) -> None:
        confusion = self.trainer.strategy.reduce(self._confusion.to(self.device), reduce_op="sum").cpu()
        metrics = change_metrics(confusion)
        for key in ("f1", "iou", "precision", "recall", "oa"):
            # An undefined score (nothing changed, nothing predicted) is logged as 0 so that checkpointing on
            # val/f1 keeps working.
            self.log(f"{stage}/{key}", metrics[key] or 0.0, prog_bar=key == "f1", sync_dist=False)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[TASK_KEY] = "change"

    def configure_optimizers(self):
        return adamw_warmup_cosine(self, self.net)
