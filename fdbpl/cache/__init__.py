"""The RIL table: teacher soft labels for random crops, computed once and replayed (Section 3.2).

- :func:`build_table` computes them (sharded over ``torch.distributed`` ranks, resumable).
- :class:`RILTable` reads them (memory-mapped, validated, never pickled).
- :class:`RegionDataset` replays each crop from its stored box and flip for training.
"""

from fdbpl.cache.build import BuildSummary, build_table
from fdbpl.cache.crops import CropSampler, render_crop
from fdbpl.cache.dataset import OPENAI_MEAN, OPENAI_STD, RegionDataset
from fdbpl.cache.images import ImageRecord, ScanResult, decode_image, scan_image_folder
from fdbpl.cache.manifest import COLUMNS, SCHEMA_VERSION, TableFormatError
from fdbpl.cache.table import RegionRecord, Regions, RILTable
from fdbpl.cache.teacher import Teacher, clip_teacher

__all__ = [
    "COLUMNS",
    "OPENAI_MEAN",
    "OPENAI_STD",
    "SCHEMA_VERSION",
    "BuildSummary",
    "CropSampler",
    "ImageRecord",
    "RILTable",
    "RegionDataset",
    "RegionRecord",
    "Regions",
    "ScanResult",
    "TableFormatError",
    "Teacher",
    "build_table",
    "clip_teacher",
    "decode_image",
    "render_crop",
    "scan_image_folder",
]
