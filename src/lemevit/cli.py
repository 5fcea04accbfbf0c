"""The ``lemevit`` command line."""
from __future__ import annotations

import argparse
import sys

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lemevit", description=__doc__)
    parser.add_argument("--version", action="version", version=f"lemevit {lemevit.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="list the registered models with their parameter counts")
    models.add_argument("--filter", default="", help="only names containing this text")
    models.add_argument("--num-classes", type=int, default=1000, help="classifier size for the count (default 1000)")
    models.set_defaults(func=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
