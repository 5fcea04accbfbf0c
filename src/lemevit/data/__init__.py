"""Data for every task: splits and their file, seeded sampling, band statistics,
the data module every task trains with, and each task's datasets (``classification``, ``segmentation``,
``change``, ``detection``)."""
from lemevit.data.classification import (
    Sample,
    SceneDataset,
    check_images,
    is_label_list,
    read_label_lists,
    read_split_file,
    scan_class_folders,
)
from lemevit.data.datamodule import Indexed, SeededDataModule
from lemevit.data.sampling import EpochShuffle, epoch_seed, reseed
from lemevit.data.splits import Split, hashed_split, load_split, save_split
from lemevit.data.statistics import Normalisation, band_normalisation, band_statistics
from lemevit.data.transforms import IMAGENET_RGB_MEAN_STD, eval_transform, train_transform

__all__ = [
    "IMAGENET_RGB_MEAN_STD",
    "EpochShuffle",
    "Indexed",
    "Normalisation",
    "Sample",
    "SceneDataset",
    "SeededDataModule",
    "Split",
    "band_normalisation",
    "band_statistics",
    "check_images",
    "epoch_seed",
    "eval_transform",
    "hashed_split",
    "is_label_list",
    "load_split",
    "read_label_lists",
    "read_split_file",
    "reseed",
    "save_split",
    "scan_class_folders",
    "train_transform",
]
