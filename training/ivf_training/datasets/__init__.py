"""Training and validation datasets, the training mix, and a resumable data order.

One module per on-disk layout (MFNet, MSRS, PST900, FMB, the generic ``vi/ir/labels`` folder,
the output of ``ivf-perception extract``) and for generated scenes. They share :mod:`.listing`
(finding files, reporting what is missing) and :mod:`.common` (the sample contract, reading,
label checks). :func:`build_dataset` builds any of them by kind; see ``training/DATASETS.md``
for the layouts and class tables.

Every dataset returns the same sample dict (see :mod:`.common`), so they can be mixed in one
``ConcatDataset`` (:func:`build_mix`). Data order and augmentation are functions of
(seed, epoch, index) only (:class:`ResumableBatchSampler`, :class:`AugmentedDataset`), so a
run resumed at step N sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from .common import LabelStats, PairDataset, Sample
from .extracted import ExtractedDataset
from .factory import DATASET_KINDS, build_dataset, default_split
from .fmb import FMBDataset
from .folder import FolderPairDataset, RealPairsDataset
from .generated import GeneratedScenesDataset
from .listing import Listing, SampleFiles
from .mfnet import MFNetDataset
from .mix import build_mix, describe_dataset
from .msrs import MSRSDataset
from .pst900 import PST900Dataset
from .sampling import AugmentedDataset, ResumableBatchSampler

__all__ = [
    "Sample",
    "SampleFiles",
    "Listing",
    "LabelStats",
    "PairDataset",
    "FolderPairDataset",
    "RealPairsDataset",
    "GeneratedScenesDataset",
    "ExtractedDataset",
    "MFNetDataset",
    "MSRSDataset",
    "PST900Dataset",
    "FMBDataset",
    "DATASET_KINDS",
    "build_dataset",
    "default_split",
    "AugmentedDataset",
    "ResumableBatchSampler",
    "build_mix",
    "describe_dataset",
]
