"""Scene recognition runs: train into a run directory, evaluate a checkpoint, with the split kept."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch

from lemevit.data import (
    ClassificationDataModule,
    SceneDataset,
    band_normalisation,
    check_images,
    eval_transform,
    load_split,
    read_image,
    read_split_file,
    save_split,
    scan_class_folders,
    stratified_split,
)
from lemevit.io import atomic_path
from lemevit.tasks.classification import ClassificationTask
from lemevit.tasks.trainer import RunConfig, check_run_dir

__all__ = ["TrainConfig", "train", "evaluate", "classification_metrics"]


@dataclass(kw_only=True)
class TrainConfig(RunConfig):
    """Everything a classification run depends on; saved as ``RUN_DIR/config.yaml``. The images are split by
    ``split_files`` (``{"train": LIST, "val": LIST}``) when given, else per class with ``split`` of them in
    training."""

    img_size: int = 224
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    drop_path_rate: float = 0.1
    gradient_clip: float | None = 1.0
    split_files: dict[str, str] = field(default_factory=dict)
    label_smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    randaugment: str | None = None
    crop_scale: list[float] = field(default_factory=lambda: [0.5, 1.0])
    rotate90: bool = True
    ema_decay: float | None = None
    skip_bad: bool = False


def _splits(cfg: TrainConfig, class_names: list[str], samples) -> dict:
    root = Path(cfg.data)
    if cfg.split_files:
        return {name: read_split_file(path, root, class_names) for name, path in cfg.split_files.items()}
    return stratified_split(samples, cfg.split, cfg.seed)


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train a classifier; writes best.ckpt, last.ckpt, split.json, config.yaml and logs/ into ``cfg.output``."""
    run = Path(cfg.output)
    last = check_run_dir(run, resume)
    root = Path(cfg.data)
    split_path = run / "split.json"
    if resume:
        _, class_names, splits = load_split(split_path)
    else:
        class_names, samples = scan_class_folders(root)
        splits = _splits(cfg, class_names, samples)
        bad = []
        for name in splits:
            splits[name], bad_here = check_images(root, splits[name], cfg.skip_bad)
            bad += bad_here
        if bad:
            with atomic_path(run / "bad_images.json") as tmp:
                tmp.write_text(json.dumps(bad, indent=1))
            print(f"skipped {len(bad)} unreadable or inconsistent images; listed in {run / 'bad_images.json'}")
        save_split(split_path, class_names, splits, root)
        cfg.save(run / "config.yaml")

    bands, mean, std = band_normalisation(root, [s.path for s in splits["train"]])
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    augment = {"randaugment": cfg.randaugment, "scale": tuple(cfg.crop_scale), "rot90": cfg.rotate90}
    datamodule = ClassificationDataModule(
        root, class_names, splits, img_size=cfg.img_size, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
        mean=mean, std=std, augment=augment, seed=cfg.seed)
    task = ClassificationTask(
        cfg.model, num_classes=len(class_names), class_names=class_names, in_chans=bands, img_size=cfg.img_size,
        mean=mean, std=std, lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_epochs=cfg.warmup_epochs,
        label_smoothing=cfg.label_smoothing, mixup=cfg.mixup, cutmix=cfg.cutmix,
        drop_path_rate=cfg.drop_path_rate, ema_decay=cfg.ema_decay, init_checkpoint=cfg.init_checkpoint,
        seed=cfg.seed)
    trainer = cfg.trainer(monitor="val/top1", progress=progress)
    trainer.fit(task, datamodule=datamodule, ckpt_path=str(last) if resume else None)
    return run


def load_task(checkpoint: str | Path) -> ClassificationTask:
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    # The weights come from the checkpoint itself, not from the file the run was initialised from.
    return ClassificationTask.load_from_checkpoint(checkpoint, map_location="cpu", init_checkpoint=None).eval()


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> dict:
    """top1, top5, per-class precision/recall/F1 and the confusion matrix (rows: true, columns: predicted)."""
    n = len(class_names)
    pred = probs.argmax(dim=1)
    k = min(5, n)
    confusion = torch.zeros(n, n, dtype=torch.long)
    confusion.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    tp = confusion.diag().double()
    precision = tp / confusion.sum(dim=0).clamp(min=1)
    recall = tp / confusion.sum(dim=1).clamp(min=1)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), torch.zeros_like(tp))
    return {
        "num_images": int(labels.numel()),
        "top1": float((pred == labels).double().mean()),
        "top5": float((probs.topk(k, dim=1).indices == labels[:, None]).any(dim=1).double().mean()),
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                             "support": int(confusion[i].sum())} for i, name in enumerate(class_names)},
        "class_names": list(class_names),
        "confusion_matrix": confusion.tolist(),
    }


def save_confusion_png(metrics: dict, path: Path, title: str) -> None:
    """The row-normalised ``confusion_matrix`` of ``metrics`` (with its ``class_names``) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.array(metrics["confusion_matrix"], dtype=float)
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    names = metrics["class_names"]
    size = max(5, 0.35 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title} (rows normalised)", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


@torch.inference_mode()
def evaluate(checkpoint: str | Path, output: str | Path, data: str | Path | None = None,
             batch_size: int = 64) -> dict:
    """Evaluate a run's checkpoint on its own held-out split (``data`` None) or on a class-per-folder set
    whose class names are those of the run. Writes metrics.json and confusion_matrix.png into ``output``."""
    task = load_task(checkpoint)
    class_names = list(task.hparams.class_names)
    if data is None:
        split_path = Path(checkpoint).parent / "split.json"
        root, _, splits = load_split(split_path)
        samples = splits.get("test") or splits["val"]
    else:
        root = Path(data)
        names, samples = scan_class_folders(root)
        unknown = sorted(set(names) - set(class_names))
        if unknown:
            raise ValueError(f"{root}: classes {unknown} are not among the model's classes {class_names}")
        samples = [dataclasses.replace(s, label=class_names.index(names[s.label])) for s in samples]
    transform = eval_transform(task.hparams.img_size, task.hparams.mean, task.hparams.std)
    loader = torch.utils.data.DataLoader(SceneDataset(Path(root), samples, transform), batch_size=batch_size)
    probs, labels = [], []
    for x, y in loader:
        probs.append(task(x).softmax(dim=1))
        labels.append(y)
    metrics = classification_metrics(torch.cat(probs), torch.cat(labels), class_names)
    metrics["checkpoint"] = str(checkpoint)
    metrics["data"] = str(root)
    output = Path(output)
    with atomic_path(output / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=1))
    save_confusion_png(metrics, output / "confusion_matrix.png",
                       f"top-1 {metrics['top1']:.1%} on {metrics['num_images']} images")
    return metrics


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders (searched recursively for images) and glob patterns -> sorted image paths."""
    import glob

    from lemevit.data import IMAGE_EXTENSIONS

    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file():
            paths.append(path)
        else:
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not matches:
                raise FileNotFoundError(f"no image matches {item!r}")
            paths += matches
    if not paths:
        raise FileNotFoundError(f"no images found in {inputs}")
    return paths


def _image_tensor(task: ClassificationTask, path: Path) -> torch.Tensor:
    image = read_image(path)
    if image.shape[-1] != task.hparams.in_chans:
        raise ValueError(f"{path}: {image.shape[-1]} bands, the model expects {task.hparams.in_chans}")
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)
    return eval_transform(task.hparams.img_size, task.hparams.mean, task.hparams.std)(x)


@torch.inference_mode()
def predict(checkpoint: str | Path, inputs: list[str], output: str | Path, topk: int = 5,
            batch_size: int = 32) -> list[dict]:
    """Top-k classes with probabilities for every image; writes ``output`` as .csv or .json."""
    output = Path(output)
    if output.suffix not in (".csv", ".json"):
        raise ValueError(f"--output must end in .csv or .json, got {output}")
    task = load_task(checkpoint)
    names = list(task.hparams.class_names)
    k = min(topk, len(names))
    paths = expand_inputs(inputs)
    rows = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        probs = task(torch.stack([_image_tensor(task, p) for p in chunk])).softmax(dim=1)
        values, indices = probs.topk(k, dim=1)
        for path, v, i in zip(chunk, values.tolist(), indices.tolist(), strict=True):
            rows.append({"path": str(path), "top": [{"class": names[c], "prob": p} for c, p in zip(i, v, strict=True)]})
    with atomic_path(output) as tmp:
        if output.suffix == ".json":
            tmp.write_text(json.dumps(rows, indent=1))
        else:
            import csv

            with tmp.open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["path"] + [f"{key}_{r}" for r in range(1, k + 1) for key in ("class", "prob")])
                for row in rows:
                    writer.writerow([row["path"]] + [x for t in row["top"] for x in (t["class"], f"{t['prob']:.6f}")])
    return rows


def explain(checkpoint: str | Path, image: str | Path, output: str | Path, block: str | None = None) -> Path:
    """Meta-token attention maps of a LeMeViT run over one image, as a PNG."""
    from lemevit.explain import meta_attention, save_meta_attention_png
    from lemevit.models import LeMeViT

    task = load_task(checkpoint)
    model = task.eval_model
    if not isinstance(model, LeMeViT):
        raise ValueError(f"{task.hparams.model} has no meta tokens: attention maps are drawn for LeMeViT models only")
    x = _image_tensor(task, Path(image))
    with torch.inference_mode():
        probs = model(x[None]).softmax(dim=1)[0]
    maps = meta_attention(model, x[None], block=block)[0]
    top = int(probs.argmax())
    picture = read_image(image)
    title = f"{Path(image).name}: {task.hparams.class_names[top]} ({float(probs[top]):.0%})"
    return save_meta_attention_png(picture, maps, output, title=title)
