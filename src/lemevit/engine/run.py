"""The run skeleton every task trains through: a locked run directory, the split kept in it, band statistics,
seeding, the Trainer and ``fit``, resumable from ``last.ckpt``.

A run directory holds ``config.yaml`` (the settings, paths absolute), ``split.json`` (the items of each
subset), ``best.ckpt`` and ``last.ckpt``, ``logs/`` (``metrics.csv`` and TensorBoard) and, when bad images
were skipped, ``bad_images.json``. Every file is replaced atomically; the directory is locked while a run
writes into it, so that a second ``train`` into it stops at once instead of mixing two runs.
"""
from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from lemevit.config.options import RunConfig
from lemevit.data.splits import Split, load_split, save_split
from lemevit.data.statistics import band_normalisation
from lemevit.engine.trainer import build_trainer, interruptible, is_launch_leader
from lemevit.errors import DataError, RunError
from lemevit.io import atomic_path, remove_stale_temporaries
from lemevit.io.checkpoint import checkpoint_task, read_checkpoint
from lemevit.io.lock import FolderLock
from lemevit.io.paths import check_writable_folder
from lemevit.io.tensor_file import UnreadableTensorFile
from lemevit.tasks.registry import get_task

__all__ = ["RunDirectory", "train"]

CONFIG_FILE, SPLIT_FILE, LAST, BEST, BAD_IMAGES = "config.yaml", "split.json", "last.ckpt", "best.ckpt", \
    "bad_images.json"


class RunDirectory:
    """The files of one run (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def last(self) -> Path:
        return self.path / LAST

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def split_file(self) -> Path:
        return self.path / SPLIT_FILE

    def lock(self) -> FolderLock:
        check_writable_folder(self.path, "output")
        return FolderLock(self.path, "`output`")

    def start_new(self) -> None:
        """Make the directory ready for a new run: refused when it holds a run (a ``last.ckpt``); the files of a
        run that was killed before its first checkpoint (logs, config, split) are cleared."""
        if self.last.is_file():
            raise RunError(f"{self.path} already holds a run; pass --resume to continue it or choose another --output")
        check_writable_folder(self.path, "output")
        for name in (CONFIG_FILE, SPLIT_FILE, BEST, BAD_IMAGES):
            (self.path / name).unlink(missing_ok=True)
        shutil.rmtree(self.path / "logs", ignore_errors=True)
        self.remove_temporaries()

    def remove_temporaries(self) -> None:
        for name in (CONFIG_FILE, SPLIT_FILE, BEST, LAST, BAD_IMAGES, "logs/metrics.csv"):
            remove_stale_temporaries(self.path / name)

    def check_resumable(self, task: str) -> None:
        """Refuse a resume that Lightning would stop with a traceback: no run here, or a ``last.ckpt`` that is
        truncated (a copy cut short, a full disk before atomic writes) or is not this run's task's."""
        if not self.last.is_file():
            raise RunError(f"--resume: {self.path} holds no {LAST} to resume from" if self.path.is_dir() else
                           f"--resume: there is no run directory {self.path}")
        for path in (self.config_file, self.split_file):
            if not path.is_file():
                raise RunError(f"--resume: {path} is missing; the run cannot be continued")
        instead = (f"resume from {BEST} by copying it over {LAST}, or train afresh into another --output"
                   if (self.path / BEST).is_file() else "train afresh into another --output")
        try:
            content = read_checkpoint(self.last)
        except DataError as e:
            reason = e.reason if isinstance(e, UnreadableTensorFile) else "no state_dict and hyper_parameters"
            raise RunError(f"--resume: {self.last} cannot be resumed from ({reason}): it is cut short or not a "
                           f"lemevit checkpoint; {instead}") from None
        if checkpoint_task(content) != task:
            raise RunError(f"--resume: {self.last} is a checkpoint of a {checkpoint_task(content)} run, not of this "
                           f"{task} run; {instead}")

    def completion(self, cfg: RunConfig) -> str | None:
        """What makes the run complete under ``cfg``'s budget (its ``last.ckpt`` trained every epoch or step of
        it), or None while training remains."""
        progress = read_checkpoint(self.last)
        if cfg.iterations:
            done = progress.get("global_step", 0)
            return f"its {done} steps reach --iterations {cfg.iterations}" if done >= cfg.iterations else None
        try:
            epochs = progress["loops"]["fit_loop"]["epoch_progress"]["total"]["processed"]
        except (KeyError, TypeError):
            return None
        return f"it trained the {epochs} epochs of --epochs {cfg.epochs}" if epochs >= cfg.epochs else None

    def read_split(self, task: str, data: str | Path | None = None) -> Split:
        task_cls = get_task(task)
        return load_split(self.split_file, task, task_cls.entry_type, root=data, validate_meta=task_cls.load_meta)

    def write(self, cfg: RunConfig, split: Split | None = None, bad: list[dict] | None = None) -> None:
        if split is not None:
            save_split(self.split_file, cfg.task, split)
        cfg.save(self.config_file)
        if bad:
            with atomic_path(self.path / BAD_IMAGES) as tmp:
                tmp.write_text(json.dumps(bad, indent=1))


def train(cfg: RunConfig, resume: bool = False, progress: bool = True, given: dict[str, Any] | None = None) -> Path:
    """Train ``cfg``'s task into ``cfg.output``; returns the run directory.

    With ``resume`` the run continues from its ``last.ckpt`` with the settings of its ``config.yaml``. ``given``
    holds the settings asked of the resumed run (default: all of ``cfg``): those a resume may change (``epochs``,
    devices, ``data`` moved elsewhere) are taken and recorded in ``config.yaml``, any other must equal the
    saved value.

    Under DDP every process runs this; only the first (global rank 0) locks the directory and writes the run's
    files, the others compute the same split (a pure function of the data and the settings).
    """
    task = get_task(cfg.task)
    run = RunDirectory(cfg.output)
    leader = is_launch_leader()
    with run.lock() if leader else contextlib.nullcontext():
        if resume:
            run.check_resumable(cfg.task)
            saved = type(cfg).from_yaml(run.config_file)
            cfg = saved.resumed_with(cfg.to_dict() if given is None else given, run.config_file).absolute()
            complete = run.completion(cfg)
            if complete:
                if leader:
                    print(f"{run.path} is complete: {complete}; give more to train on")
                return run.path
            split = run.read_split(cfg.task, data=task.data_root(cfg, progress=progress and leader))
            if leader:
                run.remove_temporaries()
                run.write(cfg)
        else:
            cfg = cfg.absolute()
            if leader:
                run.start_new()
            split, bad = task.prepare(cfg, progress=progress and leader)
        normalisation = band_normalisation(task.training_images(split))
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        # The model is built before the run's files are written: a model that cannot be made (an unknown name, a
        # backbone without the maps the head reads) leaves the output as it was.
        module = task.from_config(cfg, split, normalisation)
        datamodule = module.datamodule(cfg, split)
        if leader and not resume:
            run.write(cfg, split, bad)
            if bad:
                print(f"skipped {len(bad)} unreadable or inconsistent images; listed in {run.path / BAD_IMAGES}")
            if progress:
                # A task may start from pretrained weights by default (change detection): say what it does.
                start = ("its pretrained weights" if cfg.pretrained else cfg.init_checkpoint if cfg.init_checkpoint
                         else "a random initialisation")
                print(f"{cfg.model} starts from {start}")
        budget = dict(max_epochs=-1, max_steps=cfg.iterations) if cfg.iterations else dict(max_epochs=cfg.epochs)
        trainer = build_trainer(run.path, task.monitor, **budget, accelerator=cfg.accelerator,
                                devices=cfg.devices, num_nodes=cfg.num_nodes, precision=cfg.precision,
                                gradient_clip=cfg.gradient_clip, ema_decay=cfg.ema_decay, val_every=cfg.val_every,
                                checkpoint_steps=cfg.checkpoint_steps, progress=progress,
                                find_unused_parameters=task.find_unused_parameters, sync_batchnorm=cfg.sync_bn,
                                # Lightning's check of the validation path before training: one whole image (tile,
                                # pair, scene) checks it as well as Lightning's two batches.
                                num_sanity_val_steps=1 if task.batches_whole_images else 2)
        with interruptible(trainer):
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(run.last) if resume else None,
                        weights_only=True)
    return run.path
