"""The RIL table: teacher soft labels for random crops, computed once and replayed (Section 3.2).

- :func:`build_table` computes them (sharded over ``torch.distributed`` ranks, resumable).
- :class:`RILTable` reads them (memory-mapped, validated, never pickled).
- :class:`RegionDataset` replays each crop from its stored box and flip for training, or
  (for a table built with a student, :func:`clip_student_features`) the student's stored
  image feature of it.

Image decoding, crops and normalisation live in :mod:`fdbpl.images`.
"""

from fdbpl.cache.build import BUILD_DEFAULTS, BuildSettings, BuildSummary, build_table
from fdbpl.cache.crops import CropSampler
from fdbpl.cache.dataset import RegionDataset
from fdbpl.cache.scan import ImageRecord, ScanResult, scan_image_folder
from fdbpl.cache.student import StudentFeatures, clip_student_features, image_tower_digest
from fdbpl.cache.table import Regions, RILTable
from fdbpl.cache.teacher import Teacher, clip_teacher
from fdbpl.errors import TableFormatError

__all__ = [
    "BUILD_DEFAULTS",
    "BuildSettings",
    "BuildSummary",
    "CropSampler",
    "ImageRecord",
    "RILTable",
    "RegionDataset",
    "Regions",
    "ScanResult",
    "StudentFeatures",
    "TableFormatError",
    "Teacher",
    "build_table",
    "clip_student_features",
    "clip_teacher",
    "image_tower_digest",
    "scan_image_folder",
]
