"""The ``lemevit`` command line."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import timm
import torch

import lemevit


def _count_parameters(name: str, num_classes: int) -> int:
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=num_classes)
    return sum(p.numel() for p in model.parameters())


def cmd_models(args: argparse.Namespace) -> int:
    names = lemevit.list_models()
    if args.filter:
        names = [n for n in names if args.filter in n]
    rows = [(n, _count_parameters(n, args.num_classes)) for n in names]
    width = max((len(n) for n, _ in rows), default=5)
    print(f"{'model':<{width}}  {'params':>12}  ({args.num_classes} classes)")
    for name, params in sorted(rows, key=lambda r: r[1]):
        print(f"{name:<{width}}  {params:>12,}")
    return 0


# Options of the train command itself rather than of a task's config.
_COMMAND_OPTIONS = {"command", "func", "task", "config", "resume"}
_TASKS = ("classification", "segmentation", "change", "detection")


def _run_task(args: argparse.Namespace) -> str:
    """--task, else the task of the run being resumed, else classification."""
    if args.task:
        return args.task
    config = Path(args.output) / "config.yaml" if args.output else None
    if args.resume and config is not None and config.is_file():
        import yaml

        try:
            return (yaml.safe_load(config.read_text()) or {}).get("task", "classification")
        except (OSError, yaml.YAMLError) as e:
            raise ValueError(f"cannot read config {config}: {e}") from e
    return "classification"


def _train_config_and_entry(task: str):
    if task == "detection":
        from lemevit.tasks.detection_run import DetectionConfig, train
        return DetectionConfig, train
    if task == "segmentation":
        from lemevit.tasks.segmentation_run import SegTrainConfig, train
        return SegTrainConfig, train
    if task == "change":
        from lemevit.tasks.change_run import ChangeTrainConfig, train
        return ChangeTrainConfig, train
    from lemevit.tasks.classification_run import TrainConfig, train
    return TrainConfig, train


def cmd_train(args: argparse.Namespace) -> int:
    task = _run_task(args)
    Config, train = _train_config_and_entry(task)
    options = {k: v for k, v in vars(args).items() if k not in _COMMAND_OPTIONS and v is not None}
    # An option of another task is an error rather than silently ignored.
    misplaced = [f"--{k.replace('_', '-')}" for k in options if k not in Config.__dataclass_fields__]
    if misplaced:
        raise ValueError(f"{', '.join(misplaced)} do(es) not apply to --task {task}")
    given = options
    run = Path(args.output) if args.output else None
    if args.resume and run is not None and (run / "config.yaml").is_file():
        cfg = Config.from_yaml(run / "config.yaml", **given)
    elif args.config:
        cfg = Config.from_yaml(args.config, **given)
    else:
        missing = [f"--{k.replace('_', '-')}" for k in ("data", "output") if k not in given]
        if missing:
            raise SystemExit(f"lemevit train: {' and '.join(missing)} required (or --config FILE.yaml)")
        cfg = Config(**given)
    run = train(cfg, resume=args.resume)
    if int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0:
        print(f"run written to {run}: best.ckpt, last.ckpt, split.json, config.yaml, logs/")
    return 0


def _checkpoint_task(args: argparse.Namespace) -> str:
    """The task of the run that wrote --checkpoint; options of the other tasks are refused."""
    from lemevit.tasks.trainer import checkpoint_task

    task = checkpoint_task(args.checkpoint)
    misplaced = []
    if task not in ("segmentation", "change"):
        misplaced += [f"--{k}" for k in ("window", "stride") if getattr(args, k, None) is not None]
        if getattr(args, "preview", True) is False:
            misplaced.append("--no-preview")
    if task != "change" and getattr(args, "pair", None):
        misplaced.append("--pair")
    if misplaced:
        raise ValueError(f"{', '.join(misplaced)} do(es) not apply to {args.checkpoint}, a {task} checkpoint")
    return task


def cmd_eval(args: argparse.Namespace) -> int:
    task = _checkpoint_task(args)
    output = Path(args.output) / "metrics.json"
    if task == "detection":
        from lemevit.tasks.detection_run import evaluate

        metrics = evaluate(args.checkpoint, args.output, data=args.data, batch_size=args.batch_size or 4)
        print(f"mAP50 {metrics['map50']:.2%} (DOTA: polygon IoU 0.5, difficult ignored) on "
              f"{metrics['num_images']} images; wrote {output}")
    elif task == "segmentation":
        from lemevit.tasks.segmentation_run import evaluate

        metrics = evaluate(args.checkpoint, args.output, data=args.data, window=args.window, stride=args.stride,
                           batch_size=args.batch_size or 8)
        print(f"OA {metrics['oa']:.2%}  mIoU {metrics['miou']:.2%}  mF1 {metrics['mf1']:.2%}  on "
              f"{metrics['num_tiles']} tiles ({metrics['num_pixels']:,} labelled pixels); wrote {output}")
    elif task == "change":
        from lemevit.tasks.change_run import evaluate

        metrics = evaluate(args.checkpoint, args.output, data=args.data, window=args.window, stride=args.stride,
                           batch_size=args.batch_size or 8)
        scores = "  ".join(f"{k} {'n/a' if metrics[k] is None else format(metrics[k], '.2%')}"
                           for k in ("f1", "iou", "precision", "recall", "oa"))
        print(f"change class: {scores}  on {metrics['num_pairs']} pairs; wrote {output}")
    else:
        from lemevit.tasks.classification_run import evaluate

        metrics = evaluate(args.checkpoint, args.output, data=args.data, batch_size=args.batch_size or 64)
        print(f"top-1 {metrics['top1']:.2%}  top-5 {metrics['top5']:.2%}  on {metrics['num_images']} images "
              f"(chance {1 / len(metrics['class_names']):.2%}); wrote {output}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    task = _checkpoint_task(args)
    if task == "change":
        if not args.pair or args.images:
            raise ValueError("a change checkpoint predicts one pair: --pair A_IMAGE B_IMAGE, and no other images")
        from lemevit.tasks.change_run import predict_pair

        r = predict_pair(args.checkpoint, *args.pair, args.output, window=args.window, stride=args.stride,
                         batch_size=args.batch_size or 8, preview=args.preview)
        preview = f" (preview {r['preview']})" if r["preview"] else ""
        print(f"wrote {r['output']}: {r['width']}x{r['height']} change map, {r['changed_pixels']:,} changed "
              f"pixels{preview}")
        return 0
    if not args.images:
        raise ValueError("give the images to predict (files, folders or glob patterns)")
    if task == "detection":
        from lemevit.tasks.detection_run import predict

        for r in predict(args.checkpoint, args.images, args.output, batch_size=args.batch_size or 4):
            geo = f", {r['geojson']}" if r["geojson"] else ""
            print(f"{r['image']}: {r['detections']} objects ({r['drawn']} drawn in {r['png']}{geo})")
        print(f"wrote DOTA Task-1 files Task1_<class>.txt into {args.output}")
    elif task == "segmentation":
        from lemevit.tasks.segmentation_run import predict

        results = predict(args.checkpoint, args.images, args.output, window=args.window, stride=args.stride,
                          batch_size=args.batch_size or 8, preview=args.preview)
        for r in results:
            preview = f" (preview {r['preview']})" if r["preview"] else ""
            print(f"wrote {r['output']}: {r['width']}x{r['height']} class map{preview}")
    else:
        from lemevit.tasks.classification_run import predict

        rows = predict(args.checkpoint, args.images, args.output, topk=args.topk, batch_size=args.batch_size or 32)
        print(f"predicted {len(rows)} images; wrote {args.output}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from lemevit.tasks.classification_run import explain
    from lemevit.tasks.trainer import checkpoint_task

    task = checkpoint_task(args.checkpoint)
    if task != "classification":
        raise ValueError(f"{args.checkpoint} is a {task} checkpoint; explain draws the meta-token attention "
                         "of scene-recognition runs")

    print(f"wrote {explain(args.checkpoint, args.image, args.output, block=args.block)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from lemevit.demo import run_demo

    run_demo(args.output, model=args.model, epochs=args.epochs, img_size=args.img_size)
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from lemevit.bench.suite import BenchmarkConfig, format_ratios, run_benchmark, write_outputs

    modes = {"inference": ["inference"], "train": ["train"], "both": ["inference", "train"]}[args.mode]
    cfg = BenchmarkConfig(models=args.models, img_sizes=args.img_sizes, batch_sizes=args.batch_sizes,
                          dtypes=args.dtypes, modes=modes, device=args.device, channels_last=args.channels_last,
                          compile=args.compile, latency=not args.no_latency, memory=not args.no_memory,
                          rounds=args.rounds, warmup=args.warmup, pairs=args.pairs)
    record = run_benchmark(cfg, progress=not args.quiet)
    if record["ratios"]:
        print(format_ratios(record["ratios"]))
    written = write_outputs(record, args.output)
    print("wrote " + ", ".join(str(p) for p in written))
    measured = [r for r in record["rows"] if r["img_per_s"] is not None]
    return 0 if measured else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lemevit", description=__doc__)
    parser.add_argument("--version", action="version", version=f"lemevit {lemevit.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="list the registered models with their parameter counts")
    models.add_argument("--filter", default="", help="only names containing this text")
    models.add_argument("--num-classes", type=int, default=1000, help="classifier size for the count (default 1000)")
    models.set_defaults(func=cmd_models)

    tr = sub.add_parser("train", help="train a model into a run directory (resumable)")
    tr.add_argument("--task", choices=_TASKS,
                    help="default classification, or the task of the run given to --resume")
    tr.add_argument("--config", help="YAML file whose keys are these options (underscored); options override it")
    tr.add_argument("--data", help="class-per-folder image directory; for segmentation a folder with img_dir/ "
                                   "and ann_dir/; for change A/, B/ and label/ (LEVIR-CD, CDD); for detection "
                                   "DOTA (images/, labelTxt/) or DIOR-R")
    tr.add_argument("--output", help="run directory")
    tr.add_argument("--model", help="any model name of our registry or timm (default lemevit_tiny)")
    tr.add_argument("--img-size", type=int)
    tr.add_argument("--epochs", type=int)
    tr.add_argument("--batch-size", type=int)
    tr.add_argument("--split", type=float, help="train fraction of a stratified split (default 0.8); segmentation: "
                                                "of the tiles, 1.0 validates on the training tiles")
    tr.add_argument("--seed", type=int)
    tr.add_argument("--lr", type=float)
    tr.add_argument("--weight-decay", type=float)
    tr.add_argument("--warmup-epochs", type=float)
    tr.add_argument("--label-smoothing", type=float)
    tr.add_argument("--mixup", type=float)
    tr.add_argument("--cutmix", type=float)
    tr.add_argument("--randaugment", help="RandAugment as rand-m9-n2 (magnitude 0..30, operations), 8-bit RGB only")
    tr.add_argument("--crop-scale", type=float, nargs=2, metavar=("MIN", "MAX"),
                    help="area range of the random resized crop, as fractions of the image (default 0.5 1.0)")
    tr.add_argument("--no-rotate90", dest="rotate90", action="store_false", default=None,
                    help="no random 90-degree rotations (for scenes with a canonical orientation)")
    tr.add_argument("--drop-path-rate", type=float)
    tr.add_argument("--ema-decay", type=float, help="keep an EMA of the weights (e.g. 0.999)")
    tr.add_argument("--gradient-clip", type=float)
    tr.add_argument("--precision", choices=["fp32", "bf16", "fp16"])
    tr.add_argument("--accelerator", help="auto, cpu, gpu")
    tr.add_argument("--devices", type=int)
    tr.add_argument("--num-nodes", type=int)
    tr.add_argument("--num-workers", type=int)
    tr.add_argument("--init-checkpoint", help="start from these weights (ours or published)")
    tr.add_argument("--skip-bad", action="store_true", default=None,
                    help="skip unreadable images and report them in the run directory instead of stopping")
    seg = tr.add_argument_group("segmentation and change detection")
    seg.add_argument("--head", help="segmentation: upernet (default) or segformer; change: bit (default) or "
                                    "siamunet")
    seg.add_argument("--decoder-channels", type=int, help="decoder width (default 512 UperNet, 256 SegFormer)")
    seg.add_argument("--aux-weight", type=float, help="loss weight of the auxiliary FCN head (default 0.4, 0: none)")
    seg.add_argument("--preset", choices=["potsdam", "vaihingen", "loveda"],
                     help="class names, palette and mask encoding of a published data set")
    seg.add_argument("--class-names", nargs="+", metavar="NAME",
                     help="class names, stored in masks as first-class-value, +1, ... (else DATA/classes.yaml)")
    seg.add_argument("--ignore-value", type=int, help="mask value of unlabelled pixels (default 255)")
    seg.add_argument("--first-class-value", type=int, help="mask value of the first class (default 0)")
    seg.add_argument("--crops-per-tile", type=int,
                     help="random crops per tile and epoch (default: enough to cover the tile once)")
    seg.add_argument("--class-balance", type=float,
                     help="segmentation: fraction of crops placed on a class drawn uniformly from the tile's classes, "
                          "so that rare classes are learnt (default 0: uniform crops)")
    seg.add_argument("--dice-weight", type=float,
                     help="segmentation: weight of a Dice loss added to the cross-entropy (default 0)")
    seg.add_argument("--crops-per-pair", type=int,
                     help="change: random crops per pair and epoch (default: enough to cover the pair once)")
    seg.add_argument("--window", type=int, help="sliding window of the validation (default --img-size)")
    seg.add_argument("--stride", type=int, help="its stride (default 3/4 of the window)")
    seg.add_argument("--no-flip", dest="flip", action="store_false", default=None, help="no random flips")
    det = tr.add_argument_group("detection (--task detection; --img-size is the side of the training windows)")
    det.add_argument("--overlap", type=int, help="pixels shared by neighbouring windows (default 200)")
    det.add_argument("--fpn-channels", type=int, help="FPN width (default 256)")
    det.add_argument("--rpn-proposals", type=int, help="proposals per image in training (default 2000)")
    det.add_argument("--test-proposals", type=int, help="proposals per window at inference (default 2000)")
    tr.add_argument("--resume", action="store_true", help="continue the run in --output from its last.ckpt")
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluate a checkpoint: metrics.json and confusion_matrix.png")
    ev.add_argument("--checkpoint", required=True, help="of a run of any task (the task is read from it)")
    ev.add_argument("--data", help="data in the layout the run was trained on (default: the run's own held-out "
                                   "split)")
    ev.add_argument("--output", required=True)
    ev.add_argument("--batch-size", type=int, help="images (default 64) or windows (default 8) per batch")
    ev.add_argument("--window", type=int, help="segmentation, change: sliding window (default: the run's)")
    ev.add_argument("--stride", type=int, help="segmentation, change: its stride (default: the run's)")
    ev.set_defaults(func=cmd_eval)

    pr = sub.add_parser("predict", help="top-k classes per image into a .csv or .json file; segmentation: "
                                        "class maps of whole scenes; change: the change map of a pair; "
                                        "detection: oriented boxes")
    pr.add_argument("--checkpoint", required=True, help="of a run of any task (the task is read from it)")
    pr.add_argument("images", nargs="*", help="image files, folders or glob patterns")
    pr.add_argument("--pair", nargs=2, metavar=("A_IMAGE", "B_IMAGE"),
                    help="change: the two dates (any size, same size; GeoTIFF pairs give a GeoTIFF)")
    pr.add_argument("--output", required=True, help="FILE.csv or FILE.json; segmentation: OUT.tif or OUT.png for "
                                                    "one scene, a folder for several; change: OUT.tif or OUT.png; "
                                                    "detection: a folder")
    pr.add_argument("--topk", type=int, default=5)
    pr.add_argument("--batch-size", type=int, help="images (default 32) or windows (default 8) per batch")
    pr.add_argument("--window", type=int, help="segmentation, change: sliding window (default: the run's)")
    pr.add_argument("--stride", type=int, help="segmentation, change: its stride (default: the run's)")
    pr.add_argument("--no-preview", dest="preview", action="store_false",
                    help="segmentation, change: no OUT_preview.png (classes in colour; A | B | change)")
    pr.set_defaults(func=cmd_predict)

    ex = sub.add_parser("explain", help="meta-token attention maps of a LeMeViT model over an image (PNG)")
    ex.add_argument("--checkpoint", required=True)
    ex.add_argument("image")
    ex.add_argument("--output", required=True, help="FILE.png")
    ex.add_argument("--block", help="block name (default: the deepest Dual Cross-Attention block)")
    ex.set_defaults(func=cmd_explain)

    be = sub.add_parser("benchmark", help="speed, MACs, parameters and memory of models side by side",
                        description="Times the models interleaved (machine noise hits all alike) in every "
                                    "combination of --img-sizes, --batch-sizes, --dtypes and --mode, plus latency at "
                                    "batch 1; writes benchmark.json/.csv/.md and PNG plots into --output.")
    be.add_argument("--models", nargs="+", required=True, help="names of our registry and/or timm")
    be.add_argument("--img-sizes", nargs="+", type=int, default=[224])
    be.add_argument("--batch-sizes", nargs="+", type=int, default=[16])
    be.add_argument("--dtypes", nargs="+", default=["fp32"], choices=["fp32", "bf16", "fp16"],
                    help="fp32, or autocast to bf16 / fp16")
    be.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    be.add_argument("--mode", choices=["inference", "train", "both"], default="inference",
                    help="inference batches, training steps (forward, backward, AdamW) or both")
    be.add_argument("--channels-last", action="store_true")
    be.add_argument("--compile", action="store_true", help="torch.compile every model (compiled against compiled)")
    be.add_argument("--pairs", nargs="*", default=[], metavar="OURS:PEER", help="report per-round speed ratios")
    be.add_argument("--rounds", type=int, default=10)
    be.add_argument("--warmup", type=int, default=2)
    be.add_argument("--no-latency", action="store_true", help="skip the batch-1 latency runs")
    be.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    be.add_argument("--quiet", action="store_true", help="no progress bars")
    be.add_argument("--output", default="lemevit-benchmark", help="folder for the results (default lemevit-benchmark)")
    be.set_defaults(func=cmd_benchmark)

    demo = sub.add_parser("demo", help="train, evaluate and explain LeMeViT-Tiny on AID scenes shipped with lemevit")
    demo.add_argument("--output", default="lemevit-demo", help="folder for the run and its results")
    demo.add_argument("--model", default="lemevit_tiny")
    demo.add_argument("--epochs", type=int, default=25)
    demo.add_argument("--img-size", type=int, default=128)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        # Bad input is reported as one line naming the file or option, not as a traceback.
        print(f"lemevit {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
