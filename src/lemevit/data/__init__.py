"""Data for scene classification: image reading, class-folder datasets, splits, transforms."""
from lemevit.data.classification import (
    ClassificationDataModule,
    Sample,
    SceneDataset,
    band_normalisation,
    band_statistics,
    check_images,
    load_split,
    read_split_file,
    save_split,
    scan_class_folders,
    stratified_split,
)
from lemevit.data.images import IMAGE_EXTENSIONS, ImageReadError, read_image
from lemevit.data.transforms import IMAGENET_RGB_MEAN_STD, eval_transform, train_transform

__all__ = [
    "IMAGENET_RGB_MEAN_STD",
    "IMAGE_EXTENSIONS",
    "ClassificationDataModule",
    "ImageReadError",
    "Sample",
    "SceneDataset",
    "band_normalisation",
    "band_statistics",
    "check_images",
    "eval_transform",
    "load_split",
    "read_image",
    "read_split_file",
    "save_split",
    "scan_class_folders",
    "stratified_split",
    "train_transform",
]
