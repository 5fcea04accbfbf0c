"""Repeated augmentation: each image several times in a row, each copy augmented anew, in epochs of the data's
length, the copies dealt to different processes under DDP."""
from __future__ import annotations

import torch
from sample_data import make_scenes

from lemevit.data import IMAGENET_RGB_MEAN_STD, train_transform
from lemevit.data.classification import SceneDataset, scan_class_folders
from lemevit.data.sampling import EpochShuffle


def test_repeated_order_keeps_the_epoch_length_with_copies_in_a_row():
    keys = list(EpochShuffle(10, seed=3, repeats=3))
    assert len(keys) == 10 and [copy for _, copy in keys] == [0, 1, 2] * 3 + [0]
    assert all(keys[i][0] == keys[i + 1][0] == keys[i + 2][0] for i in range(0, 9, 3))
    assert len({index for index, _ in keys}) == 4
    # Dealt round-robin over 3 processes (what a distributed sampler does), each copy goes to another process.
    for rank in range(3):
        assert len({index for index, _ in keys[rank:9:3]}) == 3
    assert list(EpochShuffle(10, seed=3, start=4, repeats=3)) == keys[4:] + keys[:4]


def test_each_copy_is_augmented_in_its_own_way(tmp_path):
    root = make_scenes(tmp_path / "scenes", size=40)
    _, samples = scan_class_folders(root)
    mean, std = IMAGENET_RGB_MEAN_STD
    dataset = SceneDataset(root, samples, train_transform(32, mean, std), augment_seed=7)
    first, again, second = dataset[(2, 0)][0], dataset[(2, 0)][0], dataset[(2, 1)][0]
    assert torch.equal(first, again) and not torch.equal(first, second)
    assert torch.equal(dataset[2][0], first)


def test_a_run_with_repeated_augmentation_takes_as_many_steps(tmp_path):
    from lemevit.cli import main
    from lemevit.io.checkpoint import read_checkpoint

    data = make_scenes(tmp_path / "scenes")
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--output", str(run), "--img-size", "32", "--batch-size", "4",
                 "--split", "0.67", "--num-workers", "0", "--epochs", "1", "--repeated-augmentation", "3",
                 "--random-erasing", "0.25", "--interpolation", "bicubic"]) == 0
    assert read_checkpoint(run / "last.ckpt")["global_step"] == 3
