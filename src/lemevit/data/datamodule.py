"""The Lightning data module every task trains with: training items drawn in an order and with augmentations
fixed by (seed, epoch), and evaluation items (images, or whole tiles, pairs, scenes one per batch)."""
from __future__ import annotations

import math
from collections.abc import Callable

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from lemevit.data.sampling import EpochShuffle, epoch_seed
from lemevit.errors import ConfigError

__all__ = ["Indexed", "SeededDataModule", "check_loader_args"]


def check_loader_args(batch_size: int, num_workers: int) -> None:
    """A positive batch size and a non-negative number of workers, or a ConfigError naming the argument."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError("batch_size", f"must be a positive integer, got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ConfigError("num_workers", f"must be a non-negative integer, got {num_workers!r}")


class SeededDataModule(pl.LightningDataModule):
    """Loaders of ``train_set`` (a dataset with an ``augment_seed`` attribute, which this module sets every
    epoch) and of the evaluation datasets ``evaluation_sets`` (``"val"`` and optionally ``"test"``), whose items
    come with their index (:class:`Indexed`).

    The training order and each item's augmentation are functions of (seed, epoch) only, and Lightning rebuilds
    the training loader every epoch (``reload_dataloaders_every_n_epochs=1`` in the run's Trainer): a run
    resumed at an epoch boundary draws the same batches as an uninterrupted one, and one resumed from a checkpoint
    written within an epoch (``checkpoint_steps``) the batches of that epoch it had not trained on. Under DDP,
    Lightning shards that order over the ranks. With ``repeats`` (repeated augmentation) the training set is
    indexed by ``(index, copy)`` keys (:class:`~lemevit.data.sampling.EpochShuffle`). Evaluation loaders
    keep the dataset's order; ``eval_batch_size`` is 1 for tasks that score whole images of different sizes.
    """

    def __init__(self, train_set: Dataset, evaluation_sets: dict[str, Dataset], batch_size: int, num_workers: int,
                 seed: int, eval_batch_size: int | None = None, collate_fn: Callable | None = None,
                 eval_collate_fn: Callable | None = None, repeats: int = 1):
        super().__init__()
        check_loader_args(batch_size, num_workers)
        self.train_set = train_set
        self.evaluation_sets = {name: Indexed(dataset) for name, dataset in evaluation_sets.items()}
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.eval_batch_size = eval_batch_size or batch_size
        self.collate_fn, self.eval_collate_fn = collate_fn, eval_collate_fn
        self.repeats = repeats

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        epoch = trainer.current_epoch if trainer is not None else 0
        world_size = trainer.world_size if trainer is not None else 1
        self.train_set.augment_seed = epoch_seed(self.seed, epoch)
        done = 0 if trainer is None else self.batches_done(trainer.global_step, epoch, world_size)
        return DataLoader(self.train_set, batch_size=self.batch_size,
                          sampler=EpochShuffle(len(self.train_set), epoch_seed(self.seed, epoch),
                                               done * self.batch_size * world_size, self.repeats),
                          drop_last=self.drop_last, num_workers=self.num_workers, collate_fn=self.collate_fn,
                          pin_memory=torch.cuda.is_available())

    @property
    def drop_last(self) -> bool:
        # A batch of one gives no batch statistics; dropping the remainder costs nothing when there is more than one.
        return len(self.train_set) > self.batch_size

    def steps_per_epoch(self, world_size: int = 1) -> int:
        """Training batches each of ``world_size`` processes takes per epoch (one optimizer step each). Known
        without building the loader, which Lightning would otherwise build before a resumed run's progress is
        restored."""
        per_process = math.ceil(len(self.train_set) / world_size)
        return per_process // self.batch_size if self.drop_last else math.ceil(per_process / self.batch_size)

    def batches_done(self, global_step: int, epoch: int, world_size: int) -> int:
        """How many batches of ``epoch`` each process has trained on at ``global_step``: 0 at an epoch's start, more
        when the run resumes from a checkpoint written within the epoch. Under DDP the processes take the epoch's
        order in turn, so the first ``done * batch_size * world_size`` items of it are the ones trained on."""
        batches = self.steps_per_epoch(world_size)
        done = global_step - epoch * batches
        return done if 0 < done < batches else 0

    def _evaluation(self, subset: str) -> DataLoader:
        return DataLoader(self.evaluation_sets[subset], batch_size=self.eval_batch_size, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, collate_fn=self.eval_collate_fn,
                          pin_memory=torch.cuda.is_available())

    def val_dataloader(self) -> DataLoader:
        return self._evaluation("val")

    def test_dataloader(self) -> DataLoader:
        return self._evaluation("test" if "test" in self.evaluation_sets else "val")


class Indexed(Dataset):
    """The items of ``dataset`` with their index first, ``(index, *item)``: evaluation records gathered from
    several processes are deduplicated by it (a distributed sampler repeats items to even out the ranks)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple:
        item = self.dataset[index]
        return (index, *item) if isinstance(item, tuple) else (index, item)
