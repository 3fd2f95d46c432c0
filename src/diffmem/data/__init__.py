"""Data: image sets, readers and writers, built-in sources, subsets, resolution and labels.

Readers and writers live in :mod:`diffmem.data.io` (one module per format under
:mod:`diffmem.data.formats`); labels are class indices below :data:`MAX_LABEL` (2**20), and the
one ``--labels`` grammar (``none | true | random[:C] | unique | K | k1,k2,...``) is
:mod:`diffmem.data.labels`. A training set by its recipe is :class:`DataSpec` / :func:`make_dataset`;
its intra-class blend (a share of one class from a second source) is :mod:`diffmem.data.blend`.
"""

from diffmem.data.imageset import MAX_LABEL, ImageSet, to_uint8
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
from diffmem.data.labels import (
    DATA_FORMS,
    SAMPLE_FORMS,
    LabelSpec,
    assign_labels,
    conditioning_labels,
    parse_label_mode,
    parse_labels,
)
from diffmem.data.sources import SOURCES, gaussian_mixture, load_source, parse_gaussian_mixture
from diffmem.data.blend import blend_images, parse_blend, replaced_positions
from diffmem.data.spec import DataSpec, blend_counts, make_dataset
from diffmem.data.subsets import (
    class_balanced_indices,
    class_balanced_subset,
    resize,
    select_classes,
    take,
)

__all__ = [
    "ImageSet", "MAX_LABEL", "to_uint8",
    "CIFAR10_CLASSES", "load_image_set", "read_cifar10", "read_idx", "read_png",
    "save_npz", "write_dataset_zip", "write_png_folder",
    "SOURCES", "gaussian_mixture", "load_source", "parse_gaussian_mixture",
    "class_balanced_indices", "class_balanced_subset", "resize", "select_classes", "take",
    "LabelSpec", "DATA_FORMS", "SAMPLE_FORMS", "parse_labels", "parse_label_mode", "assign_labels",
    "conditioning_labels",
    "DataSpec", "make_dataset", "blend_counts", "blend_images", "parse_blend", "replaced_positions",
]
