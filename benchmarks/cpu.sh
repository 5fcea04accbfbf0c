#!/usr/bin/env bash
# The CPU figures of benchmarks/README.md, each into benchmarks/results/<name>/ (JSON, CSV, Markdown, PNG).
# Run on an otherwise idle machine: the models are interleaved, but a busy machine still widens the spread.
set -euo pipefail
cd "$(dirname "$0")"
pairs=(--pairs lemevit_tiny:pvt_v2_b1 lemevit_small:pvt_v2_b2)

# The LeMeViT paper's speed pairs: fp32, batch 16, 224 px, eager, then compiled against compiled.
lemevit benchmark --device cpu --models lemevit_tiny pvt_v2_b1 lemevit_small pvt_v2_b2 "${pairs[@]}" \
    --batch-sizes 16 --rounds 20 --warmup 3 --no-memory --output results/cpu_pairs_b16_fp32_eager
lemevit benchmark --device cpu --models lemevit_tiny pvt_v2_b1 lemevit_small pvt_v2_b2 "${pairs[@]}" \
    --batch-sizes 16 --rounds 8 --warmup 2 --no-memory --no-latency --compile \
    --output results/cpu_pairs_b16_fp32_compiled

# Our models against the peers a user would pick instead: inference and training step, batch 16, 224 px.
lemevit benchmark --device cpu --mode both --batch-sizes 16 --rounds 3 --warmup 1 "${pairs[@]}" \
    --models lemevit_tiny lemevit_small lemevit_base lvt vvt_tiny vvt_small \
             pvt_v2_b0 pvt_v2_b1 pvt_v2_b2 swin_tiny_patch4_window7_224 davit_tiny gcvit_xtiny deit_tiny_patch16_224 \
    --output results/cpu_table_b16_fp32

# The training step (forward, cross-entropy, backward, AdamW): lemevit_tiny against pvt_v2_b1, fp32, batch 32, 224 px.
lemevit benchmark --device cpu --mode train --models lemevit_tiny pvt_v2_b1 --pairs lemevit_tiny:pvt_v2_b1 \
    --batch-sizes 32 --rounds 10 --warmup 2 --no-latency --no-memory --output results/cpu_train_b32_fp32

# Time and memory against resolution: VVT's linear attention against quadratic peers, batch 1.
lemevit benchmark --device cpu --models vvt_tiny pvt_v2_b1 deit_small_patch16_224 --img-sizes 224 448 896 1344 \
    --batch-sizes 1 --rounds 3 --warmup 1 --no-latency --output results/cpu_vvt_scaling

# Runtimes: each model also exported to ONNX and run by onnxruntime (fp32, and its dynamic int8 quantization),
# interleaved with eager PyTorch; batch 16, 224 px, random weights.
lemevit benchmark --device cpu --models lemevit_tiny lemevit_small pvt_v2_b1 pvt_v2_b2 \
    --runtimes torch onnxruntime onnxruntime-int8 --batch-sizes 16 --rounds 10 --warmup 1 --no-memory --no-latency \
    --pairs lemevit_tiny@onnxruntime:lemevit_tiny lemevit_tiny@onnxruntime:pvt_v2_b1 \
            lemevit_tiny@onnxruntime:pvt_v2_b1@onnxruntime lemevit_small@onnxruntime:lemevit_small \
            lemevit_small@onnxruntime:pvt_v2_b2 lemevit_small@onnxruntime:pvt_v2_b2@onnxruntime \
            pvt_v2_b1@onnxruntime:pvt_v2_b1 lemevit_tiny:pvt_v2_b1 \
            lemevit_tiny@onnxruntime-int8:lemevit_tiny@onnxruntime \
    --output results/cpu_runtimes_b16_fp32
