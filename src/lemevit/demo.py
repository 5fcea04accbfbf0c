"""`lemevit demo`: fine-tune the AID-pretrained LeMeViT-Tiny on AID scenes shipped in the package that its
pretraining never saw, evaluate it on held-out images, and draw what it learned; minutes on a laptop CPU, nothing
downloaded."""
from __future__ import annotations

import time
from importlib.resources import files
from pathlib import Path

import torch

from lemevit.engine import EvalOptions, RunDirectory, evaluate, load_task, train
from lemevit.explain import explain_checkpoint
from lemevit.tasks.classification import ClassificationConfig

__all__ = ["DEMO_DATA", "run_demo"]

DEMO_DATA = Path(str(files("lemevit") / "demo_data" / "aid_subset"))


def _throughput(checkpoint: Path, img_size: int, batch_size: int = 32, rounds: int = 3) -> float:
    model = load_task(checkpoint).model
    x = torch.randn(batch_size, 3, img_size, img_size)
    with torch.inference_mode():
        model(x)
        start = time.perf_counter()
        for _ in range(rounds):
            model(x)
    return batch_size * rounds / (time.perf_counter() - start)


# The demo's split trained from scratch (lemevit_tiny, 25 epochs, lr 2e-3, 3 warm-up epochs, 128 px), recorded
# once in benchmarks/results/demo_cpu.txt rather than retrained at every demo.
SCRATCH_RECORD = {"top1": 0.683, "epochs": 25, "minutes": 7.1}


def run_demo(output: str | Path = "lemevit-demo", model: str = "lemevit_tiny.aid150", pretrained: bool = True,
             epochs: int = 10, img_size: int = 128, batch_size: int = 32, progress: bool = True) -> dict:
    """Fine-tune ``model`` from its pretrained weights (or train it from scratch), evaluate and explain it on the
    shipped AID subset, none of whose scenes the pretraining saw; returns the evaluation metrics.

    An interrupted demo resumes from its last checkpoint when run again with the same output folder.
    """
    output = Path(output)
    run = output / "run"
    schedule = (dict(lr=3e-4, warmup_epochs=0.5) if pretrained else dict(lr=2e-3, warmup_epochs=min(3, epochs / 2)))
    cfg = ClassificationConfig(data=str(DEMO_DATA), output=str(run), model=model, pretrained=pretrained,
                               img_size=img_size, epochs=epochs, batch_size=batch_size, split=0.8, seed=0,
                               drop_path_rate=0.0, label_smoothing=0.1, num_workers=0, **schedule)
    started = time.perf_counter()
    resume = (run / "last.ckpt").is_file()
    if resume:
        print(f"resuming the demo run in {run}")
    train(cfg, resume=resume, progress=progress)
    minutes = (time.perf_counter() - started) / 60
    best = run / "best.ckpt"
    _, metrics = evaluate(EvalOptions(checkpoint=str(best), output=str(output / "eval"), num_workers=0),
                          progress=progress)
    split = RunDirectory(run).read_split("classification")
    class_names, held_out = split.meta["class_names"], split.subsets["val"]
    example = split.root / held_out[0].path
    picture = (explain_checkpoint(best, example, output / "attention.png") if model.startswith("lemevit")
               else None)
    speed = _throughput(best, img_size)
    chance = 1 / len(class_names)
    start = f"fine-tuned from its AID pretraining ({model})" if pretrained else "trained from scratch"
    print(f"\nLeMeViT demo: {model.split('.')[0]} {start} for {epochs} epochs on {len(split.subsets['train'])} "
          f"AID scenes ({len(class_names)} classes, {img_size}px) in {minutes:.1f} min")
    print(f"held-out top-1 {metrics['top1']:.1%} (chance {chance:.1%}), top-5 {metrics['top5']:.1%}, "
          f"on {metrics['num_images']} images")
    if pretrained:
        print(f"from scratch, the same split reached {SCRATCH_RECORD['top1']:.1%} after {SCRATCH_RECORD['epochs']} "
              f"epochs ({SCRATCH_RECORD['minutes']} min; recorded, not retrained)")
    print(f"inference {speed:.0f} img/s (batch 32, {img_size}px, fp32, {torch.get_num_threads()} threads)")
    print(f"wrote {output / 'eval' / 'metrics.json'}, {output / 'eval' / 'confusion_matrix.png'}"
          + (f", {picture}" if picture else ""))
    return metrics
