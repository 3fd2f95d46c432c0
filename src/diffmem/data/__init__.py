"""Data: image sets, readers and writers, built-in sources, subsets, resolution and labels."""

from diffmem.data.imageset import ImageSet, to_uint8
from diffmem.data.io import (
    CIFAR10_CLASSES,
    load_image_set,
    read_cifar10,
    read_idx,
    read_png,
    save_npz,
    write_dataset_zip,
    write_png_folder,
)
from diffmem.data.sources import SOURCES, gaussian_mixture, load_source, parse_gaussian_mixture
from diffmem.data.subsets import (
    assign_labels,
    class_balanced_indices,
    class_balanced_subset,
    parse_label_mode,
    resize,
    select_classes,
    take,
)

__all__ = [
    "ImageSet", "to_uint8",
    "CIFAR10_CLASSES", "load_image_set", "read_cifar10", "read_idx", "read_png",
    "save_npz", "write_dataset_zip", "write_png_folder",
    "SOURCES", "gaussian_mixture", "load_source", "parse_gaussian_mixture",
    "assign_labels", "class_balanced_indices", "class_balanced_subset", "parse_label_mode",
    "resize", "select_classes", "take",
]
