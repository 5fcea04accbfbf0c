"""The ``lemevit`` command line.

``train``, ``eval`` and ``predict`` work for every registered task: ``train`` offers the options of its
``--task`` (``lemevit train --task change --help``), ``eval`` and ``predict`` those of the task of their
``--checkpoint``; each option is a field of the task's config, with its default written once there. Bad input
is reported as one line naming the option or file, with exit status 2.
"""
from __future__ import annotations

import argparse
import errno
import os
import re
import shutil
import signal
import sys
from pathlib import Path

import lemevit
from lemevit.cpu import use_available_cpus
from lemevit.errors import ConfigError, LemevitError

_COMMANDS_WITH_TASK_OPTIONS = ("train", "eval", "predict")


def _count_parameters(name: str, num_classes: int) -> int:
    import timm
    import torch

    with torch.device("meta"):
        model = timm.create_model(name, num_classes=num_classes)
    return sum(p.numel() for p in model.parameters())


def _list_pretrained(text: str) -> int:
    from lemevit.models.pretrained import PRETRAINED, find_weights, how_to_install

    listed = 0
    for name, weights in sorted(PRETRAINED.items()):
        if text not in name:
            continue
        try:
            where = str(find_weights(name))
        except LemevitError:
            where = f"not installed: {how_to_install(weights)}"
        size = weights.cfg.get("input_size", (3, 224, 224))[-1]
        print("  ".join((name, f"{size}px", "; ".join(weights.scores) or "no held-out score", where)))
        for line in (f"data: {weights.description}", *weights.notes[len(weights.scores):]):
            print(f"    {line}")
        listed += 1
    if not listed:
        print("no pretrained weights match")
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    if args.action == "list":
        return _list_pretrained(args.filter)
    from lemevit.models.pretrained import install_weights

    if args.name and len(args.source) > 1:
        raise ConfigError("--name", f"names one file, but {len(args.source)} were given; install them one at a time")
    for source in args.source:
        name, path = install_weights(source, name=args.name, timeout=args.timeout)
        print(f"installed {name}: {path} (sha256 checked); timm.create_model({name!r}, pretrained=True) loads it")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    if args.pretrained:
        return _list_pretrained(args.filter)
    names = lemevit.list_models()
    if args.filter:
        names = [n for n in names if args.filter in n]
    rows = [(n, _count_parameters(n, args.num_classes)) for n in names]
    width = max((len(n) for n, _ in rows), default=5)
    print(f"{'model':<{width}}  {'params':>12}  ({args.num_classes} classes)")
    for name, params in sorted(rows, key=lambda r: r[1]):
        print(f"{name:<{width}}  {params:>12,}")
    return 0


def _leader() -> bool:
    from lemevit.engine.trainer import is_launch_leader

    return is_launch_leader()


class _TaskParser:
    """An argument parser for one task's options (a train config, eval or predict options)."""

    def __init__(self, command: str, options, description: str, epilog: str | None = None, extra=None):
        from lemevit.config.options import add_options

        self.options = options
        self.parser = argparse.ArgumentParser(prog=f"lemevit {command}", description=description, epilog=epilog,
                                              exit_on_error=False)
        if extra is not None:
            extra(self.parser)
        self.flags = add_options(self.parser, options, skip=("task",))
        _plain_help(self.parser, self.flags)

    def parse(self, argv: list[str], misplaced: str) -> tuple[argparse.Namespace, dict]:
        """The namespace and the fields given; an option of another task is refused naming it."""
        try:
            args, unknown = self.parser.parse_known_args(argv)
        except argparse.ArgumentError as e:
            raise ConfigError("", f"{e.argument_name}: {e.message}" if e.argument_name else e.message) from None
        if unknown:
            flags = [u.split("=")[0] for u in unknown if u.startswith("--")]
            if flags:
                raise ConfigError("", f"{', '.join(flags)} do(es) not apply to {misplaced}")
            self.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        fields = self.options.fields()
        given = {k: v for k, v in vars(args).items() if k in fields and v is not None and v != []}
        return args, given


def _pre_parse(argv: list[str], *names: str) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False)
    for name in names:
        if name == "--resume":
            pre.add_argument(name, action="store_true")
        else:
            pre.add_argument(name)
    return pre.parse_known_args(argv)[0]


def _train_task(pre: argparse.Namespace) -> str:
    """--task, else the task of --recipe or of --config, else that of the run being resumed, else classification."""
    from lemevit.config.options import read_yaml_mapping
    from lemevit.engine.run import CONFIG_FILE

    if pre.task:
        return pre.task
    if pre.recipe:
        from lemevit.recipes import get_recipe

        return get_recipe(pre.recipe).task
    if pre.config:
        return read_yaml_mapping(pre.config).get("task", "classification")
    if pre.resume and pre.output and (Path(pre.output) / CONFIG_FILE).is_file():
        return read_yaml_mapping(Path(pre.output) / CONFIG_FILE).get("task", "classification")
    return "classification"


def cmd_train(argv: list[str], context: dict) -> int:
    from lemevit.engine import train
    from lemevit.engine.run import CONFIG_FILE
    from lemevit.tasks import get_task, task_names

    pre = _pre_parse(argv, "--task", "--config", "--recipe", "--output", "--resume")
    task = get_task(_train_task(pre))
    names = task_names()

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--task", choices=names, help="default classification, or the task of --config or of "
                                                          "the run given to --resume")
        parser.add_argument("--config", help="YAML file whose keys are these options (underscored, as in a run's "
                                             "config.yaml); options given here override it")
        parser.add_argument("--recipe", help="a published experiment's settings (`lemevit recipes` lists them); "
                                             "--config and options given here override them")
        parser.add_argument("--print-config", action="store_true",
                            help="print the resolved configuration (and the learning rates of its global batch) "
                                 "and exit")
        parser.add_argument("--resume", action="store_true", help="continue the run in --output from its last.ckpt "
                                                                  "(only --epochs, devices, workers and a moved --data "
                                                                  "may differ)")

    parser = _TaskParser("train", task.config, f"Train a model for {task.description} into a run directory: "
                                               "best.ckpt, last.ckpt, split.json, config.yaml, logs/.",
                         epilog=f"These are the options of --task {task.name}; the tasks are {', '.join(names)} "
                                "(lemevit train --task TASK --help).", extra=common)
    context["flags"] = parser.flags
    args, given = parser.parse(argv, f"--task {task.name}")
    if args.output:
        context["interrupted"] = lambda: _train_interrupted(Path(args.output))
    if args.resume:
        if not args.output:
            raise ConfigError("output", "is required: the run directory to resume")
        config_file = Path(args.output) / CONFIG_FILE
        if not config_file.is_file():
            raise ConfigError("output", f"{args.output} holds no run to resume ({CONFIG_FILE} missing)")
        # The run directory is where it is now, whatever its config.yaml says (it may have been moved).
        cfg = task.config.from_yaml(config_file, output=str(Path(args.output).resolve()))
        run = train(cfg, resume=True, given=given)
    else:
        base = {}
        if args.recipe:
            from lemevit.recipes import get_recipe

            base = dict(get_recipe(args.recipe).config)
        if args.config:
            base.update(task.config.yaml_values(args.config))
        if args.print_config:
            # Data and output are the user's; the configuration can be read without them.
            given = {"data": "DATA", "output": "RUN", **given}
        cfg = task.config(**{**base, **given})
        if args.print_config:
            print(_resolved_config(cfg), end="")
            return 0
        run = train(cfg)
    if _leader():
        print(f"run written to {run}: best.ckpt, last.ckpt, split.json, config.yaml, logs/")
    return 0


def _train_interrupted(output: Path) -> str:
    from lemevit.engine.run import LAST

    if (output / LAST).is_file():
        return f"interrupted; resume with: lemevit train --output {output} --resume"
    return "interrupted before the first checkpoint: nothing to resume; run the same command again to start over"


def _resolved_config(cfg) -> str:
    """``cfg`` as the YAML of a run's config.yaml, followed by the learning rates of its global batch."""
    import yaml

    devices = cfg.devices if isinstance(cfg.devices, int) else 1
    batch = cfg.batch_size * devices * cfg.num_nodes
    opt = cfg.optimization()
    peak = opt.peak_lr(batch)
    # The lowest rate the schedule reaches: the decaying ones end at the minimum, the steps drop from the peak.
    lowest = {"multistep": peak * opt.decay_rate ** len(opt.milestones), "constant": peak}
    resolved = {"global_batch": batch, "peak_lr": peak, "warmup_start_lr": peak * opt.warmup_lr_factor,
                "min_lr": lowest.get(opt.schedule, peak * opt.min_lr_factor)}
    note = "" if isinstance(cfg.devices, int) else f"  # with --devices {cfg.devices} counted as 1"
    return (yaml.safe_dump(cfg.to_dict(), sort_keys=False) + f"# resolved{note}\n"
            + yaml.safe_dump(resolved, sort_keys=False))


def cmd_recipes(args: argparse.Namespace) -> int:
    from lemevit.recipes import get_recipe, recipe_names

    recipes = [get_recipe(n) for n in recipe_names() if args.filter in n]
    results = {r.name: ", ".join(f"{k} {v:.2f}" for k, v in r.result.items()) for r in recipes}
    width = max((len(r.name) for r in recipes), default=6)
    scored = max((len(text) for text in results.values()), default=9)
    print(f"{'recipe':<{width}}  {'task':<14}  {'published':<{scored}}  {'GPU h':>6}  data")
    for r in recipes:
        print(f"{r.name:<{width}}  {r.task:<14}  {results[r.name]:<{scored}}  {r.gpu_hours:>6g}  {r.data}")
    print("GPU h: a rough estimate of A100 hours (the recipe's notes say what the sources left unstated); "
          "lemevit train --recipe NAME --print-config shows a recipe's settings")
    return 0


def _checkpoint_parser(command: str, argv: list[str], context: dict):
    """The parser of the task of ``--checkpoint`` (the generic options when none is given)."""
    from lemevit.config.options import EvalOptions, PredictOptions
    from lemevit.io.checkpoint import trained_model_task
    from lemevit.tasks import get_task

    pre = _pre_parse(argv, "--checkpoint")
    if pre.checkpoint is None:
        options = EvalOptions if command == "eval" else PredictOptions
        generic = _TaskParser(command, options, "", epilog="These are the options of every task; give --checkpoint "
                                                           "with --help for those of its task.")
        generic.parser.parse_args(argv)  # --help, or the usage error
        raise ConfigError("checkpoint", "is required")
    context["flags"] = {"checkpoint": "--checkpoint"}
    task = get_task(trained_model_task(pre.checkpoint))
    options = task.eval_options if command == "eval" else task.predict_options
    what = "Evaluate a checkpoint: metrics.json (and plots)" if command == "eval" else \
        "Predict with a checkpoint"
    parser = _TaskParser(command, options, f"{what}; these are the options of a {task.name} checkpoint.")
    context["flags"] = parser.flags
    return task, options, parser, pre.checkpoint


def cmd_eval(argv: list[str], context: dict) -> int:
    from lemevit.engine import evaluate

    task, options, parser, checkpoint = _checkpoint_parser("eval", argv, context)
    _, given = parser.parse(argv, f"{checkpoint}, a {task.name} checkpoint")
    context["interrupted"] = lambda: "interrupted; no metrics were written"
    module, metrics = evaluate(options(**given))
    if _leader():
        print(f"{module.describe(metrics)}; wrote {Path(given['output']) / 'metrics.json'}")
    return 0


def cmd_predict(argv: list[str], context: dict) -> int:
    from lemevit.engine import predict

    task, options, parser, checkpoint = _checkpoint_parser("predict", argv, context)
    _, given = parser.parse(argv, f"{checkpoint}, a {task.name} checkpoint")
    if "output" in given:
        context["interrupted"] = lambda: f"interrupted; {task.interrupted_prediction(Path(given['output']))}"
    for line in predict(options(**given)):
        print(line)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from lemevit.export import export_model

    result = export_model(args.output, checkpoint=args.checkpoint, model=args.model, weights=args.weights,
                          features_only=args.features_only, in_chans=args.in_chans, num_classes=args.num_classes,
                          img_size=args.img_size, formats=tuple(dict.fromkeys(["safetensors", args.format])),
                          opset=args.opset, dtype=args.dtype, resolution_cm=args.resolution_cm,
                          band_names=args.band_names)
    print("wrote " + ", ".join(str(p) for p in result.files))
    for check in result.checks:
        size = "x".join(map(str, check.deviation.size))
        fixed = f" (the graph's size is fixed: {check.fixed_size})" if check.fixed_size else ""
        bound = " (quantization error, not bounded)" if check.int8 else ""
        print(f"{check.path.name}: onnxruntime against PyTorch at {size}{fixed}: largest deviation "
              f"{check.deviation.largest:.2e}{bound}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from lemevit.explain import explain_checkpoint

    print(f"wrote {explain_checkpoint(args.checkpoint, args.image, args.output, block=args.block)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from lemevit.demo import run_demo

    epochs = args.epochs or (25 if args.scratch else 10)
    run_demo(args.output, model=args.model or ("lemevit_tiny" if args.scratch else "lemevit_tiny.aid150"),
             pretrained=not args.scratch, epochs=epochs, img_size=args.img_size)
    return 0


def cmd_prepare_panoptic(args: argparse.Namespace) -> int:
    from lemevit.data.panoptic import ANNOTATIONS_FILE, IMAGES_DIR, prepare_panoptic

    summary = prepare_panoptic(args.data, args.output, args.things, preset=args.preset, class_names=args.class_names,
                               min_area=args.min_area, link=args.link)
    segments = ", ".join(f"{name} {n}" for name, n in summary["segments"].items())
    images = Path(args.output) / IMAGES_DIR
    placed = (f"{summary['links']} image(s) hard-linked into {images} (the same files as in {args.data}: edit one, "
              "both change)" if summary["links"] else f"the images copied into {images}")
    print(f"wrote {Path(args.output) / ANNOTATIONS_FILE}, {summary['images']} panoptic PNG(s) and {placed}; "
          f"segments: {segments}")
    return 0


def cmd_prepare_oscd(args: argparse.Namespace) -> int:
    from lemevit.data.oscd import prepare_oscd

    split = dict(args.split_files) if args.split_files else None
    summary = prepare_oscd(args.data, args.output, args.bands or (), split, scale=args.reflectance_scale,
                           offset=args.reflectance_offset)
    subsets = ", ".join(f"{name} {n}" for name, n in summary["subsets"].items())
    print(f"wrote {summary['cities']} cities ({subsets}) of {len(summary['bands'])} bands into {args.output}: A/, B/, "
          f"label/, list/; {summary['changed_pixels']:,} changed pixels")
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from lemevit.bench.suite import BenchmarkConfig, format_ratios, run_benchmark, write_outputs
    from lemevit.io.paths import check_writable_folder

    check_writable_folder(args.output, "output")
    modes = {"inference": ["inference"], "train": ["train"], "both": ["inference", "train"]}[args.mode]
    cfg = BenchmarkConfig(models=args.models, img_sizes=args.img_sizes, batch_sizes=args.batch_sizes,
                          dtypes=args.dtypes, modes=modes, device=args.device, channels_last=args.channels_last,
                          compile=args.compile, latency=not args.no_latency, memory=not args.no_memory,
                          rounds=args.rounds, warmup=args.warmup, pairs=args.pairs, runtimes=args.runtimes)
    record = run_benchmark(cfg, progress=not args.quiet)
    if record["ratios"]:
        print(format_ratios(record["ratios"]))
    written = write_outputs(record, args.output)
    print("wrote " + ", ".join(str(p) for p in written))
    measured = [r for r in record["rows"] if r["img_per_s"] is not None]
    return 0 if measured else 1


def _subset_file(text: str) -> tuple[str, str]:
    subset, sep, path = text.partition("=")
    if not sep or not subset or not path:
        raise argparse.ArgumentTypeError(f"expected SUBSET=FILE, got {text!r}")
    return subset, path


def cmd_serve(args: argparse.Namespace) -> int:
    from lemevit.serve import ServeOptions, serve

    token = args.token
    if args.token_file is not None:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as e:
            raise ConfigError("token_file", f"cannot read {args.token_file}: {e.strerror or e}") from None
    return serve(ServeOptions(args.checkpoint, host=args.host, port=args.port, workers=args.workers,
                              max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout, token=token,
                              max_body_mb=args.max_body_mb, timeout=args.timeout, runtime=args.runtime,
                              accelerator=args.accelerator, devices=args.devices, allow_urls=args.allow_urls))


def _add_serve_parser(sub) -> None:
    serve = sub.add_parser("serve", help="serve a run's checkpoint or a model file over HTTP (POST /predict, "
                                         "GET /info, GET /health); needs the serve extra",
                           description="Answers POST /predict as `lemevit predict` answers one input: an image body "
                                       "(PNG, JPEG, TIFF; multipart parts a and b for a change model); top classes "
                                       "as JSON, maps as GeoTIFF or PNG (Accept), boxes and panoptic segments as "
                                       "GeoJSON or pixel JSON. Stops on SIGTERM once the requests in flight are "
                                       "answered.")
    serve.add_argument("--checkpoint", required=True, help="a run's checkpoint (RUN/best.ckpt) or a model file "
                                                           "folder (lemevit export), of any task")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind: 127.0.0.1 (default: this machine "
                                                          "only), 0.0.0.0 or ::")
    serve.add_argument("--port", type=int, default=8000, help="(default 8000)")
    serve.add_argument("--workers", type=int, default=1, help="model processes per device (default 1)")
    serve.add_argument("--max-batch-size", type=int, default=1, help="requests run through a classifier as one "
                                                                     "batch (default 1; dense tasks batch the "
                                                                     "windows of each image instead)")
    serve.add_argument("--batch-timeout", type=float, default=0.0, help="seconds a batch waits to fill (default 0)")
    auth = serve.add_mutually_exclusive_group()
    auth.add_argument("--token", help="requests must carry Authorization: Bearer TOKEN (GET /health excepted)")
    auth.add_argument("--token-file", help="read the token from this file (not shown in the process list)")
    serve.add_argument("--max-body-mb", type=float, default=64.0, help="larger bodies are refused with 413 "
                                                                       "(default 64)")
    serve.add_argument("--timeout", type=float, default=60.0, help="seconds a request may take before 504 "
                                                                   "(default 60)")
    serve.add_argument("--runtime", choices=["torch", "onnxruntime", "onnxruntime-int8"], default="torch",
                       help="as predict's --runtime (default torch)")
    serve.add_argument("--accelerator", choices=["auto", "cpu", "gpu", "cuda"], default="auto")
    serve.add_argument("--devices", default="auto", type=lambda text: text if text == "auto" else int(text),
                       help="devices, each with --workers processes (default auto)")
    serve.add_argument("--allow-urls", action="store_true", help="also take JSON naming an image URL or a STAC "
                                                                 "Item to read (off: the server fetches nothing)")
    serve.set_defaults(func=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lemevit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"lemevit {lemevit.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = sub.add_parser("models", help="list the registered models with their parameter counts")
    models.add_argument("--filter", default="", help="only names containing this text")
    models.add_argument("--num-classes", type=int, default=1000, help="classifier size for the count (default 1000)")
    models.add_argument("--pretrained", action="store_true",
                        help="list the pretrained weights instead (as `lemevit weights list`): name, input size, "
                             "held-out scores, training data and command, file")
    models.set_defaults(func=cmd_models)

    weights = sub.add_parser("weights", help="install pretrained weights that do not ship in the package, or list "
                                             "all of them")
    weights.set_defaults(func=cmd_weights)
    actions = weights.add_subparsers(dest="action", required=True, metavar="ACTION")
    install = actions.add_parser("install", help="copy a weights file (or download it) into the weights directory, "
                                                 "its sha256 checked against lemevit's record")
    install.add_argument("source", nargs="+",
                         help="weights files (<model>.<tag>.safetensors, e.g. the repository's weights/*.safetensors), "
                              "http(s) URLs of them, or names of weights whose download address lemevit knows")
    install.add_argument("--name", help="which weights the file is (default: told by its file name)")
    install.add_argument("--timeout", type=float, default=60.0, help="seconds a download may wait for the server "
                                                                     "(default 60)")
    listing = actions.add_parser("list", help="the pretrained weights: held-out scores, data, command, where their "
                                              "file is or how to get it")
    listing.add_argument("--filter", default="", help="only names containing this text")

    recipes = sub.add_parser("recipes", help="list the papers' experiments as recipes for lemevit train --recipe")
    recipes.add_argument("--filter", default="", help="only names containing this text")
    recipes.set_defaults(func=cmd_recipes)

    # These three parse their own arguments, which depend on the task (see main).
    sub.add_parser("train", help="train a model of any task into a run directory (resumable); "
                                 "lemevit train --task TASK --help", add_help=False)
    sub.add_parser("eval", help="evaluate a checkpoint of any task: metrics.json and plots", add_help=False)
    sub.add_parser("predict", help="predict with a checkpoint: top classes (CSV/JSON), class maps, change maps, "
                                   "oriented boxes or panoptic segments of whole scenes", add_help=False)

    exp = sub.add_parser("export", help="a run of any task, or a bare model, as a portable model file "
                                        "(model.safetensors + config.json) and optionally ONNX",
                         description="Writes DIR/model.safetensors and DIR/config.json, which eval, predict, "
                                     "lemevit.create_model and timm load without unpickling; with --format onnx also "
                                     "DIR/model.onnx (dynamic batch, height and width; a detector also "
                                     "DIR/model.box_head.onnx), checked with onnxruntime against PyTorch at a size "
                                     "other than the export size; with --format deepness DIR/model.deepness.onnx, "
                                     "which QGIS's Deepness plugin runs as it is. DIR/item.json describes the files "
                                     "as a STAC Item (MLM extension).")
    source = exp.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a run's checkpoint (RUN/best.ckpt) or model file, of any task")
    source.add_argument("--model", help="a bare model by name (`lemevit models`), random or with --weights")
    exp.add_argument("--weights", help="with --model: weights of ours or of the published layout")
    exp.add_argument("--features-only", action="store_true",
                     help="with --model: the backbone's stride-4/8/16/32 feature maps instead of the classifier")
    exp.add_argument("--num-classes", type=int, help="with --model: classifier size (default the model's)")
    exp.add_argument("--in-chans", type=int, default=3, help="with --model: input bands (default 3)")
    exp.add_argument("--img-size", type=int, help="export size (default the run's training size, or the model's)")
    exp.add_argument("--format", choices=["safetensors", "onnx", "onnx-int8", "deepness"], default="safetensors",
                     help="onnx: also model.onnx (needs the export extra); onnx-int8: also model.int8.onnx, "
                          "onnxruntime's dynamic int8 quantization of it; deepness: also model.deepness.onnx, a "
                          "segmentation (or panoptic: its semantic branch) run for QGIS's Deepness plugin")
    exp.add_argument("--resolution-cm", type=float,
                     help="with --format deepness: ground size of a pixel in cm (default: that of the run's "
                          "georeferenced training images)")
    exp.add_argument("--band-names", nargs="+", metavar="NAME",
                     help="names of the input bands in order, for item.json (the STAC Item)")
    exp.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    exp.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32",
                     help="data type of the weights in model.safetensors (fp16 halves the file; the model computes "
                          "in fp32 once loaded) (default fp32)")
    exp.add_argument("--output", required=True, help="the model file folder")
    exp.set_defaults(func=cmd_export)

    ex = sub.add_parser("explain", help="meta-token attention maps of a LeMeViT scene-recognition run over an "
                                        "image (PNG)")
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
    be.add_argument("--runtimes", nargs="+", default=["torch"], choices=["torch", "onnxruntime", "onnxruntime-int8"],
                    help="onnxruntime: also each model exported to ONNX, measured as NAME@onnxruntime (CPU, fp32 "
                         "inference; needs the export extra); onnxruntime-int8: its dynamic int8 quantization")
    be.add_argument("--pairs", nargs="*", default=[], metavar="OURS:PEER",
                    help="report per-round speed ratios (NAME@onnxruntime for an onnxruntime entry)")
    be.add_argument("--rounds", type=int, default=10)
    be.add_argument("--warmup", type=int, default=2)
    be.add_argument("--no-latency", action="store_true", help="skip the batch-1 latency runs")
    be.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    be.add_argument("--quiet", action="store_true", help="no progress bars")
    be.add_argument("--output", default="lemevit-benchmark", help="folder for the results (default lemevit-benchmark)")
    be.set_defaults(func=cmd_benchmark)

    prepare = sub.add_parser("prepare", help="derive a data set for a task from another's")
    kinds = prepare.add_subparsers(dest="kind", required=True, metavar="KIND")
    pan = kinds.add_parser("panoptic", help="a COCO panoptic data set from a semantic-segmentation one",
                           description="Each connected component of a --things class becomes an instance, every other "
                                       "class a stuff region; writes OUTPUT/panoptic.json, OUTPUT/panoptic/*.png "
                                       "(segment ids) and OUTPUT/img_dir/ (the images, copied; with --link, hard "
                                       "links to them).")
    pan.add_argument("--data", required=True, help="semantic-segmentation data set (img_dir/ and ann_dir/)")
    pan.add_argument("--output", required=True, help="a new folder for the panoptic data set")
    pan.add_argument("--things", nargs="+", required=True, metavar="CLASS", help="the classes made of objects")
    pan.add_argument("--preset", help="label scheme of --data (as for segmentation: potsdam5, vaihingen5, ...)")
    pan.add_argument("--class-names", nargs="+", help="class names of --data, instead of --preset or classes.yaml")
    pan.add_argument("--link", action="store_true",
                     help="hard-link the images instead of copying them: no extra disk space, but an image edited in "
                          "place then changes in both data sets")
    pan.add_argument("--min-area", type=int, default=0,
                     help="thing components of fewer pixels are left unlabelled (default 0: all kept)")
    pan.set_defaults(func=cmd_prepare_panoptic)
    oscd = kinds.add_parser("oscd", help="a change-detection data set (A/, B/, label/, list/) from the OSCD release",
                            description="Stacks each labelled city's two dates (Sentinel-2 band files at 10, 20 and "
                                        "60 m) on the first date's 10 m grid as reflectance: OUTPUT/A|B/CITY.tif "
                                        "(float32, bands named), OUTPUT/label/CITY.png (0/255 from CITY-cm.tif) and "
                                        "OUTPUT/list/train.txt (and val.txt), for lemevit train --task change.")
    oscd.add_argument("--data", required=True, help="the OSCD release (the folder holding 'Onera Satellite Change "
                                                    "Detection dataset - Images'), or its images folder")
    oscd.add_argument("--output", required=True, help="the folder of the change-detection data set")
    oscd.add_argument("--bands", nargs="+", metavar="NAME", help="the bands, in order (default all 13: B01 ... B8A "
                                                                 "B09 ... B12); B04 B03 B02 for RGB")
    oscd.add_argument("--split-files", nargs="+", metavar="SUBSET=FILE", type=_subset_file,
                      help="train=FILE val=FILE naming the cities of each (default: train.txt, and the labelled "
                           "cities of test.txt to validate)")
    oscd.add_argument("--reflectance-scale", type=float, default=1e-4,
                      help="reflectance = DN * scale + offset (default 0.0001: OSCD's L1C products)")
    oscd.add_argument("--reflectance-offset", type=float, default=0.0, help="(default 0)")
    oscd.set_defaults(func=cmd_prepare_oscd)

    demo = sub.add_parser("demo", help="fine-tune, evaluate and explain the AID-pretrained LeMeViT-Tiny on AID scenes "
                                       "shipped with lemevit",
                          description="Fine-tunes the AID-pretrained LeMeViT-Tiny on AID scenes shipped with lemevit "
                                      "(none of which its pretraining saw), evaluates it on held-out ones and draws "
                                      "its meta-token attention, into --output (default lemevit-demo in the current "
                                      "folder): run/ (the run, resumed when the demo is run again), eval/ "
                                      "(metrics.json, confusion_matrix.png) and attention.png.")
    demo.add_argument("--output", default="lemevit-demo",
                      help="folder for run/, eval/ and attention.png (default lemevit-demo, in the current folder)")
    demo.add_argument("--model", help="default lemevit_tiny.aid150 (lemevit_tiny with --scratch)")
    demo.add_argument("--scratch", action="store_true", help="train from a random initialisation instead")
    demo.add_argument("--epochs", type=int, help="default 10 (25 with --scratch)")
    demo.add_argument("--img-size", type=int, default=128)
    demo.set_defaults(func=cmd_demo)
    _add_serve_parser(sub)
    _plain_help(parser)
    return parser


def _plain_help(parser: argparse.ArgumentParser, flags: dict[str, str] | None = None) -> None:
    """The help of ``parser`` and of its subcommands as plain text (see :func:`~lemevit.config.options.plain`)."""
    from lemevit.config.options import plain

    parser.description, parser.epilog = plain(parser.description, flags), plain(parser.epilog, flags)
    for action in parser._actions:
        action.help = plain(action.help, flags)
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                choice.help = plain(choice.help, flags)
            for sub in set(action.choices.values()):
                _plain_help(sub, flags)


def render_error(error: LemevitError, flags: dict[str, str]) -> str:
    """One line for the user: a ConfigError's argument as the option it was given by (``img_size: ...`` →
    ``--img-size: ...``), and every `name` quoted in the message as its flag."""
    from lemevit.config.options import flag

    text = str(error)
    if isinstance(error, ConfigError):
        name = flags.get(error.argument, flag(error.argument) if error.argument else "")
        text = f"{name}: {error.message}" if name else error.message
    text = re.sub(r"`([a-z_]+)`", lambda m: flags.get(m.group(1), flag(m.group(1))), text)
    return " ".join(text.split())


# How torch's DataLoader rebuilds an exception raised in one of its workers: the message holds the traceback.
_WORKER_TRACEBACK = re.compile(r"^Caught (\w+) in DataLoader worker process \d+\.\n"
                               r"Original Traceback \(most recent call last\):\n")


def _worker_error(error: BaseException) -> tuple[str, str] | None:
    """The class name and message of the exception a DataLoader worker raised, when ``error`` is how torch re-raised
    it in the main process (the same class with the traceback as its message, or a RuntimeError for a class it cannot
    rebuild from a message alone); None for any other error."""
    text = str(error)
    match = _WORKER_TRACEBACK.match(text)
    if match is None:
        return None
    # The traceback's last line is "module.Class: message", the original exception (after any it was raised from).
    last = text.rstrip().splitlines()[-1]
    name, _, message = last.partition(": ")
    return match.group(1), message if name.rpartition(".")[2] == match.group(1) else last


def _lemevit_error_names() -> set[str]:
    found, pending = set(), [LemevitError]
    while pending:
        cls = pending.pop()
        found.add(cls.__name__)
        pending += cls.__subclasses__()
    return found


# Errors of the files given, told as "FILE: reason".
_FILE_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)


def _disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def _exit_on_sigterm(signum, frame) -> None:
    # SystemExit unwinds the stack, so temporary files are removed and locks released.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    use_available_cpus()
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    command = argv[0] if argv else None
    context: dict = {"flags": {}}
    try:
        if command in _COMMANDS_WITH_TASK_OPTIONS:
            return {"train": cmd_train, "eval": cmd_eval, "predict": cmd_predict}[command](argv[1:], context)
        args = build_parser().parse_args(argv)
        return args.func(args)
    except Exception as e:
        if os.environ.get("LEMEVIT_TRACEBACK"):
            raise
        said = isinstance(e, (LemevitError, *_FILE_ERRORS)) or _disk_full(e)
        original = _worker_error(e)
        if original is not None and original[0] == ConfigError.__name__ and ": " in original[1]:
            # torch cannot rebuild a ConfigError from its text: rebuilt here, so that its argument reads as the flag
            message = render_error(ConfigError(*original[1].split(": ", 1)), context["flags"])
        elif original is not None and (said or original[0] in _lemevit_error_names()):
            message = " ".join(original[1].split())
        elif isinstance(e, LemevitError):
            message = render_error(e, context["flags"])
        elif said:
            message = f"{e.filename}: {e.strerror}" if e.filename else str(e)
            if _disk_full(e) and e.filename:
                message += f" ({shutil.disk_usage(Path(e.filename).parent).free / 2**20:.1f} MiB free there)"
        else:
            raise
        print(f"lemevit {command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        note = context["interrupted"]() if "interrupted" in context else "interrupted"
        print(f"lemevit {command}: {note}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
