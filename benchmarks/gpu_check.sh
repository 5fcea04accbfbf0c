#!/usr/bin/env bash
# The GPU check, in under 8 minutes on one GPU: the CUDA-marked tests, `lemevit benchmark` in the LeMeViT paper's
# setting (batch 256, fp16 autocast, channels-last, 224 px; the paper reports 1.08x / 1.26x over PVTv2), whole-scene
# prediction on CUDA in bf16 (a 4000x4000 scene), and DDP training on one GPU (torchrun) for a few steps.
# Results go to benchmarks/results/gpu_check/; run from a clone with `pip install -e ".[dev]"` done.
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results/gpu_check
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt"

python -m pytest -q -m cuda tests 2>&1 | tee "$out/cuda_tests.txt"

lemevit benchmark --device cuda --models lemevit_tiny lemevit_small lemevit_base pvt_v2_b1 pvt_v2_b2 \
    --pairs lemevit_tiny:pvt_v2_b1 lemevit_small:pvt_v2_b2 --batch-sizes 256 --dtypes fp16 --channels-last \
    --rounds 20 --warmup 5 --no-memory --quiet --output "$out/benchmark_b256_fp16_cl" | tee "$out/benchmark.txt"

work=$(mktemp -d)
python - "$work" <<'PY'
import sys
from pathlib import Path

import numpy as np
from PIL import Image

root = Path(sys.argv[1]) / "tiles"
rng = np.random.default_rng(0)
for folder in ("img_dir", "ann_dir"):
    (root / folder).mkdir(parents=True)
for i in range(8):
    Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(root / "img_dir" / f"t{i}.png")
    Image.fromarray(rng.integers(0, 4, (256, 256), dtype=np.uint8)).save(root / "ann_dir" / f"t{i}.png")
(root / "classes.yaml").write_text("class_names: [a, b, c, d]\n")
Image.fromarray(rng.integers(0, 255, (4000, 4000, 3), dtype=np.uint8)).save(Path(sys.argv[1]) / "scene.png")
PY
# DDP on one GPU through torchrun: the launcher multi-GPU and multi-node runs use.
torchrun --standalone --nproc_per_node 1 -m lemevit.cli train --task segmentation --data "$work/tiles" \
    --output "$work/run" --model lemevit_tiny --img-size 256 --epochs 2 --batch-size 4 --accelerator gpu \
    --devices 1 --precision bf16 --num-workers 4 2>&1 | tail -3 | tee "$out/train_ddp.txt"
lemevit predict --checkpoint "$work/run/best.ckpt" "$work/scene.png" --output "$work/scene_classes.png" \
    --accelerator gpu --precision bf16 --window 512 --batch-size 16 2>&1 | tail -2 | tee "$out/predict_4000px_bf16.txt"
rm -rf "$work"
