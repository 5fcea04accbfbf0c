"""What runs on a CUDA device: the models in fp16/bf16 and channels-last against fp32, training and whole-scene
prediction through the command line on the GPU. Marked ``cuda``; skipped where no CUDA device is present
(``benchmarks/gpu_check.sh`` runs them on a GPU machine)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sample_data import make_tiles

import lemevit
from lemevit.cli import main

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")]


@pytest.mark.parametrize("name", ["lemevit_tiny", "lvt", "vvt_tiny"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_models_under_autocast_and_channels_last_agree_with_fp32(name, dtype):
    model = lemevit.create_model(name).eval().cuda()
    x = torch.randn(4, 3, 224, 224, device="cuda")
    with torch.inference_mode():
        reference = model(x).float().softmax(-1)
        fast = model.to(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=dtype):
            got = fast(x.contiguous(memory_format=torch.channels_last)).float().softmax(-1)
    assert (got - reference).abs().max() < 2e-2


def test_train_and_predict_a_scene_on_the_gpu_in_bf16(tmp_path):
    data = make_tiles(tmp_path / "tiles", size=96)
    run = tmp_path / "run"
    assert main(["train", "--task", "segmentation", "--data", str(data), "--output", str(run), "--model",
                 "lemevit_tiny", "--img-size", "64", "--epochs", "2", "--batch-size", "2", "--num-workers", "0",
                 "--decoder-channels", "16", "--split", "0.67", "--accelerator", "gpu", "--devices", "1",
                 "--precision", "bf16"]) == 0
    scene = data / "img_dir" / "tile0.png"
    for name, extra in (("cpu", ["--accelerator", "cpu"]), ("gpu", ["--accelerator", "gpu", "--precision", "bf16"])):
        assert main(["predict", "--checkpoint", str(run / "best.ckpt"), str(scene), "--output",
                     str(tmp_path / name), *extra]) == 0
    cpu, gpu = (np.asarray(Image.open(tmp_path / n / "tile0.png")) for n in ("cpu", "gpu"))
    assert (cpu == gpu).mean() >= 0.99


def test_eval_and_predict_run_the_network_channels_last_on_cuda_only(tmp_path):
    from lemevit.engine.eval_predict import load_task

    data = make_tiles(tmp_path / "tiles", size=64)
    run = tmp_path / "run"
    assert main(["train", "--task", "segmentation", "--data", str(data), "--output", str(run), "--model",
                 "lemevit_tiny", "--img-size", "32", "--epochs", "1", "--batch-size", "2", "--num-workers", "0",
                 "--decoder-channels", "16", "--split", "0.67", "--accelerator", "cpu"]) == 0
    module = load_task(run / "best.ckpt")
    module.on_predict_start()
    conv = next(m for m in module.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous()
    module.cuda().on_predict_start()
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
