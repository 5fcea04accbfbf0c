"""Scene classification as a Lightning module: any model our registry or timm knows."""
from __future__ import annotations

import math
from collections.abc import Sequence

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3

from lemevit.data.classification import seed_everything_quietly
from lemevit.models import create_model

__all__ = ["ClassificationTask", "adamw_warmup_cosine", "warmup_cosine"]


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_factor: float = 0.01) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to ``min_factor``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


def adamw_warmup_cosine(task: pl.LightningModule, net: torch.nn.Module) -> dict:
    """What every task's ``configure_optimizers`` returns: AdamW over ``net`` (timm's parameter groups: no weight
    decay on norms, biases and ``no_weight_decay`` parameters) at ``task.hparams.lr`` and ``weight_decay``,
    stepped per batch through :func:`warmup_cosine` (``warmup_epochs``, ``min_lr_factor``)."""
    hparams = task.hparams
    optimizer = create_optimizer_v2(net, "adamw", lr=hparams.lr, weight_decay=hparams.weight_decay)
    total = max(1, int(task.trainer.estimated_stepping_batches))
    epochs = max(1, task.trainer.max_epochs or 1)
    warmup = min(total - 1, int(round(hparams.warmup_epochs * total / epochs)))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, max(warmup, 1), total, hparams.min_lr_factor))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class ClassificationTask(pl.LightningModule):
    """Trains and evaluates an image classifier.

    AdamW (no weight decay on norms, biases and the model's ``no_weight_decay`` parameters), warm-up then
    cosine schedule stepped per batch, label smoothing, optional mixup/cutmix (timm) and EMA of the
    weights (timm's ``ModelEmaV3``; validation and the saved model then use the EMA weights).

    The random state is re-seeded from (seed, epoch, rank) at every epoch start, so that a run resumed from
    an epoch boundary continues exactly as the uninterrupted run would have.
    """

    def __init__(
        self,
        model: str,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        in_chans: int = 3,
        img_size: int = 224,
        mean: Sequence[float] = (123.675, 116.28, 103.53),
        std: Sequence[float] = (58.395, 57.12, 57.375),
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_epochs: float = 1.0,
        min_lr_factor: float = 0.01,
        label_smoothing: float = 0.1,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        drop_path_rate: float = 0.1,
        ema_decay: float | None = None,
        init_checkpoint: str | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.model = create_model(model, num_classes=num_classes, in_chans=in_chans,
                                  drop_path_rate=drop_path_rate, checkpoint=init_checkpoint)
        self.ema = ModelEmaV3(self.model, decay=ema_decay, use_warmup=True) if ema_decay else None
        self.mixup = (Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=label_smoothing,
                            num_classes=num_classes) if mixup > 0 or cutmix > 0 else None)
        self.soft_loss = SoftTargetCrossEntropy()

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights that are evaluated and exported: the EMA ones when EMA is on."""
        return self.ema.module if self.ema is not None else self.model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.eval_model(x)

    def on_train_epoch_start(self) -> None:
        seed_everything_quietly((self.hparams.seed * 1_000_003 + self.current_epoch * 7919 + self.global_rank + 1)
                                % 2**32)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.mixup is not None and x.shape[0] % 2 == 0:  # timm's Mixup pairs images within the batch
            x, soft = self.mixup(x, y)
            loss = self.soft_loss(self.model(x), soft)
        else:
            loss = F.cross_entropy(self.model(x), y, label_smoothing=self.hparams.label_smoothing)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=x.shape[0])
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(self.model, step=self.global_step)

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        top1 = (topk[:, 0] == y).float().mean()
        top5 = (topk == y[:, None]).any(dim=1).float().mean()
        n = x.shape[0]
        self.log(f"{stage}/loss", loss, prog_bar=False, sync_dist=True, batch_size=n)
        self.log(f"{stage}/top1", top1, prog_bar=True, sync_dist=True, batch_size=n)
        self.log(f"{stage}/top5", top5, sync_dist=True, batch_size=n)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).softmax(dim=1)

    def configure_optimizers(self):
        return adamw_warmup_cosine(self, self.model)
