"""The Lightning Trainer every run is built on: checkpoints written atomically, logs a resume continues, the
EMA of the weights, devices and precision, for training and for inference alike."""
from __future__ import annotations

import csv
import logging
import os
import signal
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, Timer, WeightAveraging
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lemevit.errors import ConfigError
from lemevit.io import atomic_path

__all__ = ["AtomicCheckpointIO", "ContinuedCSVLogger", "ExponentialMovingAverage", "build_inference_trainer",
           "build_trainer", "interruptible", "is_launch_leader", "resolve_precision"]


def is_launch_leader() -> bool:
    """Whether this process is the first of its run (global rank 0), from the environment a launcher sets
    (torchrun's ``RANK``, Lightning's ``LOCAL_RANK`` and ``NODE_RANK`` for the processes it starts, SLURM's
    ``SLURM_PROCID``); True for a process no launcher started. Before the Trainer exists this is how a run
    knows which process writes its files."""
    return all(int(os.environ.get(name, 0) or 0) == 0 for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temporary file and renamed over the old one: a run killed while
    saving keeps its previous ``last.ckpt`` intact."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if get_filesystem(path).protocol not in ("file", ("file", "local")):
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


class _ContinuedCSVWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        # Lightning's writer deletes an existing metrics.csv here; this one reads its header and appends.
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = next(csv.reader(file), [])

    def _rows(self) -> list[dict]:
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            return list(csv.DictReader(file))

    def _write(self, rows: list[dict], fieldnames: list[str]) -> None:
        with atomic_path(self.metrics_file_path) as tmp, open(tmp, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        # Lightning truncates the file and writes it again when a column appears (every epoch's first
        # validation metrics do): a run killed meanwhile was left with an empty log.
        self._write(self._rows(), fieldnames)

    def drop_steps_from(self, step: int) -> None:
        """Forget the rows of ``step`` and later, which a resumed run trains and logs again."""
        if not self._fs.isfile(self.metrics_file_path):
            return
        rows = self._rows()
        kept = [r for r in rows if not r.get("step") or int(float(r["step"])) < step]
        if len(kept) < len(rows):
            self._write(kept, self.metrics_keys)


class ContinuedCSVLogger(CSVLogger):
    """``CSVLogger`` that a resumed run continues: ``metrics.csv`` keeps the epochs logged before the
    interruption (Lightning's own logger deletes the file when a run starts), and is replaced atomically
    when a column is added."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _ContinuedCSVWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuedCSVWriter(log_dir=self.log_dir)
        return self._experiment


class _ResumableLog(pl.Callback):
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A run killed mid-epoch has logged steps past its checkpoint, which the resumed run repeats.
        if trainer.ckpt_path is None or not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, ContinuedCSVLogger):
                logger.experiment.drop_steps_from(trainer.global_step)


def resolve_precision(precision: str, accelerator: str) -> str:
    """Map fp32/bf16/fp16 to Lightning's names, refusing what the device cannot do."""
    names = {"fp32": "32-true", "32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed", "16": "16-mixed"}
    if precision not in names:
        raise ConfigError("precision", f"must be one of fp32, bf16, fp16; got {precision!r}")
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if precision in ("fp16", "16") and not on_gpu:
        raise ConfigError("precision", "fp16 needs a CUDA GPU; use bf16 or fp32 on a CPU")
    if precision == "bf16" and on_gpu and not torch.cuda.is_bf16_supported():
        raise ConfigError("precision", "bf16 is not supported by this GPU; use fp16 or fp32")
    return names[precision]


class _ValidateAtBudgetEnd(pl.Callback):
    """With a budget in steps (``max_steps``), ends the run through ``should_stop`` at its last step, which makes
    Lightning validate there (and write best.ckpt) even when the step falls within an epoch."""

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        if trainer.global_step >= trainer.max_steps:
            trainer.should_stop = True


class ExponentialMovingAverage(WeightAveraging):
    """Lightning's weight averaging with an exponential moving average of decay ``decay``, warmed up as timm's
    ``ModelEmaV3`` does: the ``n``-th update uses ``min(decay, 1 - (1 + n) ** -2/3)``, so that the average
    follows the fast early changes instead of the random initialisation. Buffers (batch-norm statistics) are
    averaged too.

    The average lives in the callback, not in the module, so DDP sees no parameter without a gradient.
    Validation runs on the averaged weights, and a checkpoint's ``state_dict`` holds them (the raw weights are
    kept beside them for resuming): ``eval``, ``predict`` and exports use the average.
    """

    def __init__(self, decay: float):
        if not 0 < decay < 1:
            raise ConfigError("ema_decay", f"must be in (0, 1), got {decay!r}")
        self.decay = decay

        def average(averaged: torch.Tensor, current: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
            step = float(count)
            weight = min(decay, 1 - (1 + step) ** (-2 / 3))
            return averaged * weight + current * (1 - weight)

        super().__init__(avg_fn=average, use_buffers=True)


def _accelerator(accelerator: str) -> str:
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError("accelerator", f"{accelerator}: this machine has no CUDA GPU that torch can use "
                                         f"(torch {torch.__version__}); use cpu or auto")
    return accelerator


def _quiet_lightning() -> None:
    # Lightning's device and precision banners say nothing our own output does not; and these warnings are about
    # what a lemevit run does on purpose (its run directory holds its config and split before the first
    # checkpoint; prediction steps write their outputs and return nothing).
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in (r"Checkpoint directory .* exists and is not empty", r"predict returned None",
                    r".*isinstance\(treespec, LeafSpec\)",
                    # The data module itself skips what a run resumed within an epoch has trained on.
                    r"You're resuming from a checkpoint that ended before the epoch ended",
                    # The task's hook (no data fed as the band means) serves its loaders with and without a data
                    # module.
                    r"You have overridden `on_after_batch_transfer` in `LightningModule` but have passed in a"):
        warnings.filterwarnings("ignore", message=message)


def _strategy(devices: int | str, num_nodes: int, find_unused_parameters: bool) -> str:
    multi = num_nodes > 1 or (isinstance(devices, int) and devices > 1) or int(os.environ.get("WORLD_SIZE", 1)) > 1
    if not multi:
        return "auto"
    return "ddp_find_unused_parameters_true" if find_unused_parameters else "ddp"


def _trainer(**kwargs) -> pl.Trainer:
    try:
        return pl.Trainer(**kwargs)
    except MisconfigurationException as e:
        # Lightning's checks of the devices asked for (more than there are, an unknown name).
        argument = "devices" if "device" in str(e).lower() and "accelerator" not in str(e).lower() else "accelerator"
        raise ConfigError(argument, str(e).splitlines()[0]) from None


@contextmanager
def interruptible(trainer: pl.Trainer) -> Iterator[None]:
    """A context for ``trainer.fit``, ``test`` or ``predict`` in which Ctrl-C stays a ``KeyboardInterrupt``.

    Lightning answers Ctrl-C with its graceful shutdown and then ``sys.exit(1)``, leaving SIGINT ignored: the
    caller could not tell an interruption from a failure, and a second Ctrl-C would do nothing. The exit is
    turned back into the ``KeyboardInterrupt`` and the SIGINT handler restored."""
    main_thread = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if main_thread else None
    try:
        yield
    except SystemExit:
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        if main_thread and handler is not None and signal.getsignal(signal.SIGINT) is not handler:
            signal.signal(signal.SIGINT, handler)


def build_trainer(run_dir: str | Path, monitor: str, max_epochs: int, accelerator: str = "auto",
                  devices: int | str = "auto", num_nodes: int = 1, precision: str = "fp32",
                  gradient_clip: float | None = None, ema_decay: float | None = None, val_every: int = 1,
                  checkpoint_steps: int | None = None, progress: bool = True, find_unused_parameters: bool = False,
                  **kwargs) -> pl.Trainer:
    """A Trainer writing ``best.ckpt`` (best ``monitor``), ``last.ckpt`` (every epoch), CSV and TensorBoard logs
    into ``run_dir``. DDP is used when more than one device or node is asked for (also under torchrun, whose
    environment Lightning reads); ``find_unused_parameters`` is for models some of whose parameters get no
    gradient (a LeMeViT backbone's meta-token branch after its last Dual Cross-Attention block does not reach
    the dense features). ``ema_decay`` adds :class:`ExponentialMovingAverage`; ``val_every`` validates every that
    many epochs, for validations that cost much (DOTA's full images); ``checkpoint_steps`` also writes
    ``last.ckpt`` every that many steps within an epoch."""
    _quiet_lightning()
    run_dir = Path(run_dir)
    best = ModelCheckpoint(dirpath=run_dir, filename="best", monitor=monitor, mode="max", save_top_k=1,
                           enable_version_counter=False, auto_insert_metric_name=False)
    # A checkpoint of its own rather than save_last, which writes last.ckpt only when best.ckpt is written: a run
    # whose score stopped improving would resume from its best epoch instead of its last.
    last = ModelCheckpoint(dirpath=run_dir, filename="last", save_top_k=1, enable_version_counter=False,
                           auto_insert_metric_name=False, save_on_train_epoch_end=True)
    # Timer's elapsed time is saved in each checkpoint and carried on by a resume (training_minutes).
    callbacks = [best, last, LearningRateMonitor(logging_interval="step"), Timer(), _ResumableLog()]
    if checkpoint_steps:
        callbacks.append(ModelCheckpoint(dirpath=run_dir, filename="last", save_top_k=1, enable_version_counter=False,
                                         auto_insert_metric_name=False, every_n_train_steps=checkpoint_steps))
    if ema_decay:
        callbacks.append(ExponentialMovingAverage(ema_decay))
    if kwargs.get("max_steps", -1) > 0:
        callbacks.append(_ValidateAtBudgetEnd())
    return _trainer(
        default_root_dir=run_dir,
        max_epochs=max_epochs,
        accelerator=_accelerator(accelerator),
        devices=devices,
        num_nodes=num_nodes,
        strategy=_strategy(devices, num_nodes, find_unused_parameters),
        precision=resolve_precision(precision, accelerator),
        gradient_clip_val=gradient_clip,
        check_val_every_n_epoch=val_every,
        callbacks=callbacks,
        logger=[ContinuedCSVLogger(run_dir, name="logs", version=""),
                TensorBoardLogger(run_dir, name="logs", version="")],
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=progress,
        enable_model_summary=False,
        # The training loader is rebuilt every epoch so that its order is seeded by the epoch, which makes a
        # resumed run see the same batches as an uninterrupted one.
        reload_dataloaders_every_n_epochs=1,
        log_every_n_steps=1,
        **kwargs,
    )


def build_inference_trainer(accelerator: str = "auto", devices: int | str = 1, num_nodes: int = 1,
                            precision: str = "fp32", progress: bool = True) -> pl.Trainer:
    """A Trainer for ``eval`` (``test``) and ``predict``: on the devices asked for (several: DDP, each process
    taking a share of the items), under the precision asked for, writing no logs or checkpoints."""
    _quiet_lightning()
    return _trainer(accelerator=_accelerator(accelerator), devices=devices, num_nodes=num_nodes,
                    strategy=_strategy(devices, num_nodes, False), precision=resolve_precision(precision, accelerator),
                    logger=False, enable_checkpointing=False, enable_progress_bar=progress,
                    enable_model_summary=False)
