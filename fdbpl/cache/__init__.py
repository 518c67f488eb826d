"""The RIL table: teacher soft labels for random crops, computed once and replayed (Section 3.2).

- :func:`build_table` computes them (sharded over ``torch.distributed`` ranks, resumable).
- :class:`RILTable` reads them (memory-mapped, validated, never pickled).
- :class:`RegionDataset` replays each crop from its stored box and flip for training, or
  (for a table built with a student, :func:`clip_student_features`) the student's stored
  image feature of it.

Image decoding, crops and normalisation live in :mod:`fdbpl.images`; the names that
used to be exported from here (``decode_image``, ``render_crop``, ``OPENAI_MEAN``,
``OPENAI_STD``) and the format's internals (``COLUMNS``, ``SCHEMA_VERSION``,
``RegionRecord``) still import from here but are no longer part of its interface.
"""

from fdbpl.cache.build import BuildSummary, build_table
from fdbpl.cache.crops import CropSampler
from fdbpl.cache.dataset import RegionDataset
from fdbpl.cache.images import ImageRecord, ScanResult, scan_image_folder
from fdbpl.cache.manifest import COLUMNS as COLUMNS
from fdbpl.cache.manifest import SCHEMA_VERSION as SCHEMA_VERSION
from fdbpl.cache.manifest import TableFormatError
from fdbpl.cache.student import StudentFeatures, clip_student_features, image_tower_digest
from fdbpl.cache.table import RegionRecord as RegionRecord
from fdbpl.cache.table import Regions, RILTable
from fdbpl.cache.teacher import Teacher, clip_teacher
from fdbpl.images import OPENAI_MEAN as OPENAI_MEAN
from fdbpl.images import OPENAI_STD as OPENAI_STD
from fdbpl.images import decode_image as decode_image
from fdbpl.images import render_crop as render_crop

__all__ = [
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
