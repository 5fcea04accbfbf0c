"""Evidence that Oriented R-CNN learns: overfit the shared DOTA v1.0 samples (five images, 11 classes present)
with a LeMeViT-Tiny backbone from scratch on CPU, training on 512x512 windows, then measure DOTA mAP50 on the
same full images (window and merge, polygon IoU 0.5, difficult objects ignored).

    nice -n 19 python benchmarks/detection_overfit.py --minutes 45

Training stops after --epochs or --minutes, whichever comes first. The CPU is shared and other jobs may pause
this one, so --minutes counts this process's CPU time divided by --threads, not the wall clock. Writes
results/detection_overfit.json (mAP, per-class AP, the loss per epoch, time, settings).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from lemevit.data.detection import PatchDataset, collate_detection, scan_detection_folder
from lemevit.data.images import read_image
from lemevit.io import atomic_path
from lemevit.ops.rotated import box_to_quad
from lemevit.tasks.detection import DetectionTask, detection_map
from lemevit.tasks.detection_run import detect_image

HERE = Path(__file__).parent
SHARED = HERE.parent.parent / "shared" / "data" / "dota_v1_samples"
LOCAL = HERE.parent / "tests" / "fixtures" / "dota_v1_samples"  # two of the five images, for clones without ../shared


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(SHARED if SHARED.is_dir() else LOCAL))
    p.add_argument("--model", default="lemevit_tiny")
    p.add_argument("--img-size", type=int, default=512)
    p.add_argument("--overlap", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--minutes", type=float, default=45.0, help="training budget: CPU minutes per thread")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--fpn-channels", type=int, default=256)
    p.add_argument("--rpn-proposals", type=int, default=1000)
    p.add_argument("--test-proposals", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", default=str(HERE / "results" / "detection_overfit.json"))
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)

    class_names, images = scan_detection_folder(args.data)
    windows = PatchDataset(images, size=args.img_size, overlap=args.overlap, augment=False)
    loader = torch.utils.data.DataLoader(windows, batch_size=args.batch_size, shuffle=True,
                                         collate_fn=collate_detection)
    task = DetectionTask(args.model, len(class_names), class_names, img_size=args.img_size, overlap=args.overlap,
                         lr=args.lr, drop_path_rate=0.0, fpn_channels=args.fpn_channels,
                         rpn_proposals=args.rpn_proposals,
                         test_proposals=args.test_proposals)
    detector = task.detector
    optimizer = torch.optim.AdamW(detector.parameters(), lr=args.lr, weight_decay=0.05)
    steps_per_epoch = len(loader)
    warmup = steps_per_epoch  # one epoch of linear warm-up, then constant: overfitting wants no decay
    print(f"{len(images)} images, {len(windows)} windows with objects, {steps_per_epoch} steps per epoch")

    history, step, start, cpu_start = [], 0, time.perf_counter(), time.process_time()
    for epoch in range(args.epochs):
        detector.train()
        totals: dict[str, float] = {}
        for images_batch, targets in loader:
            for group in optimizer.param_groups:
                group["lr"] = args.lr * min(1.0, (step + 1) / warmup)
            losses = detector(images_batch, targets)
            loss = sum(losses.values())
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(detector.parameters(), 35.0)
            optimizer.step()
            step += 1
            for k, v in losses.items():
                totals[k] = totals.get(k, 0.0) + v.item() / steps_per_epoch
        busy = (time.process_time() - cpu_start) / args.threads
        history.append({"epoch": epoch + 1, "wall_minutes": round((time.perf_counter() - start) / 60, 2),
                        "cpu_minutes_per_thread": round(busy / 60, 2), **{k: round(v, 4) for k, v in totals.items()}})
        print(json.dumps(history[-1]), flush=True)
        if not all(math.isfinite(v) for v in totals.values()):
            raise RuntimeError(f"loss diverged at epoch {epoch + 1}: {totals}")
        if busy > args.minutes * 60:
            break
    train_minutes = (time.perf_counter() - start) / 60
    train_cpu_minutes = (time.process_time() - cpu_start) / args.threads / 60

    task.eval()
    eval_start = time.perf_counter()
    detections, truths = [], []
    for labels in images:
        boxes, scores, classes = detect_image(task, read_image(labels.image))
        detections.append({"quads": box_to_quad(boxes).numpy(), "scores": scores.numpy(), "labels": classes.numpy()})
        truths.append({"quads": labels.quads, "labels": labels.labels, "difficult": labels.difficult})
    metrics = detection_map(detections, truths, class_names)
    record = {
        "what": "Oriented R-CNN (FPN + P6) with a from-scratch backbone overfitting the shared DOTA v1.0 samples; "
                "mAP50 on the training images, full-image DOTA protocol",
        "data": str(args.data), "images": [str(i.image.name) for i in images], "windows": len(windows),
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "device": "cpu", "threads": torch.get_num_threads(),
        "epochs_run": len(history), "train_wall_minutes": round(train_minutes, 1),
        "train_cpu_minutes_per_thread": round(train_cpu_minutes, 1),
        "eval_minutes": round((time.perf_counter() - eval_start) / 60, 1),
        "map50": metrics["map50"], "per_class": metrics["per_class"], "history": history,
    }
    with atomic_path(args.output) as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    print(f"mAP50 on the training images: {metrics['map50']:.3f} after {len(history)} epochs "
          f"({train_cpu_minutes:.1f} CPU min per thread, {train_minutes:.1f} min wall); wrote {args.output}")


if __name__ == "__main__":
    main()
