"""Turn a raw scene-recognition download into the class-folder layout ``lemevit train`` reads, with a held-out
subset for reporting and a MANIFEST.md that records the source, the counts and the terms.

    # AID, the 150 px copy of all 10,000 images (repository zlima/testtensor, commit f6a0f746, folder AID/):
    # everything but the demo subset shipped in the package, 10 % of each class held out (seed 0)
    python benchmarks/prepare_scene_sets.py --source /data/AID --output /data/aid150 --name AID \
        --exclude src/lemevit/demo_data/aid_subset --holdout 0.1

    # UC Merced Land Use (21 classes x 100 TIFFs; repository 527760681/Keras-Remote-sensing-image-retrieval,
    # commit ab097bbb, folder UCMerced_LandUse/Images, or the official download's Images/)
    python benchmarks/prepare_scene_sets.py --source /data/UCMerced_LandUse/Images --output /data/ucmerced \
        --name "UC Merced Land Use"

The source is one folder per class (both downloads come so). Images are copied, not converted; a class
folder name is kept as the class name. ``--holdout F`` puts a fraction F of every class into ``heldout/``
with the stratified, path-hashed split ``lemevit train --split`` uses (seeded by ``--seed``), the rest into
``train/``; without it everything goes to ``train/``. ``--exclude DIR`` leaves out every image whose
``<class>/<file>`` is also in DIR (a subset kept for another purpose, e.g. the demo's).
"""
from __future__ import annotations

import argparse
import shutil
from collections import Counter
from pathlib import Path

from lemevit.data import hashed_split, scan_class_folders
from lemevit.io import atomic_path


def _excluded(folder: Path | None) -> set[str]:
    if folder is None:
        return set()
    _, samples = scan_class_folders(folder)
    return {s.path for s in samples}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True, help="one folder per class")
    p.add_argument("--output", required=True, help="new folder: train/ (and heldout/) of class folders")
    p.add_argument("--name", required=True, help="the data set's name, for the manifest")
    p.add_argument("--exclude", help="a class-folder tree whose images are left out")
    p.add_argument("--holdout", type=float, help="fraction of each class held out for reporting")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--terms", default="none stated by the source",
                   help="the terms of use, for the manifest")
    args = p.parse_args()

    source, output = Path(args.source), Path(args.output)
    if output.exists():
        raise SystemExit(f"--output {output} exists; choose a new folder")
    class_names, samples = scan_class_folders(source)
    excluded = _excluded(Path(args.exclude) if args.exclude else None)
    kept = [s for s in samples if s.path not in excluded]
    subsets = (hashed_split(kept, 1 - args.holdout, args.seed, key=lambda s: s.path, group=lambda s: s.label)
               if args.holdout else {"train": kept})
    subsets = {"heldout" if name == "val" else name: members for name, members in subsets.items()}
    for subset, members in subsets.items():
        for s in members:
            target = output / subset / s.path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / s.path, target)

    counts = {subset: Counter(class_names[s.label] for s in members) for subset, members in subsets.items()}
    header = "| class | " + " | ".join(counts) + " |\n|---|" + "---|" * len(counts) + "\n"
    rows = "".join(f"| {name} | " + " | ".join(str(counts[s][name]) for s in counts) + " |\n"
                   for name in class_names)
    totals = "| **all** | " + " | ".join(str(sum(c.values())) for c in counts.values()) + " |\n"
    split = (f"{args.holdout:.0%} of every class in `heldout/` (lemevit's stratified split, seed {args.seed}), the "
             "rest in `train/`" if args.holdout else "everything in `train/`")
    manifest = (f"# {args.name}, class-folder layout for lemevit\n\n"
                f"- Source: `{source}` ({len(samples)} images, {len(class_names)} classes).\n"
                f"- Left out: {len(samples) - len(kept)} images"
                + (f" that are also in `{args.exclude}`" if args.exclude else "") + ".\n"
                f"- Split: {split}.\n"
                f"- Terms: {args.terms}.\n"
                f"- Written by `python benchmarks/prepare_scene_sets.py` with {vars(args)}.\n\n"
                + header + rows + totals)
    with atomic_path(output / "MANIFEST.md") as tmp:
        tmp.write_text(manifest)
    print(manifest)


if __name__ == "__main__":
    main()
