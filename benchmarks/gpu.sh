#!/usr/bin/env bash
# The GPU figures of benchmarks/README.md: the LeMeViT paper's setting (batch 256, fp16 autocast,
# channels_last, 224 px), eager and compiled, into benchmarks/results/<name>/.
set -euo pipefail
cd "$(dirname "$0")"
models=(lemevit_tiny lemevit_small lemevit_base lvt vvt_tiny vvt_small
        pvt_v2_b0 pvt_v2_b1 pvt_v2_b2 swin_tiny_patch4_window7_224 davit_tiny gcvit_xtiny deit_tiny_patch16_224)
pairs=(--pairs lemevit_tiny:pvt_v2_b1 lemevit_small:pvt_v2_b2)
lemevit benchmark --device cuda --models "${models[@]}" "${pairs[@]}" --mode both --batch-sizes 256 \
    --dtypes fp16 --channels-last --rounds 20 --warmup 5 --output results/gpu_table_b256_fp16
lemevit benchmark --device cuda --models lemevit_tiny pvt_v2_b1 lemevit_small pvt_v2_b2 "${pairs[@]}" \
    --batch-sizes 256 --dtypes fp16 --channels-last --compile --rounds 20 --warmup 5 --no-latency \
    --output results/gpu_pairs_b256_fp16_compiled
