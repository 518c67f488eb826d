"""fdbpl: Faster Distillation-Based Prompt Learning (arXiv 2505.18053) for CLIP training loops.

Import the pieces you need from their subpackages::

    from fdbpl.sparsify import topk_mr, SparseSoftLabels
    from fdbpl.losses import FDBPLLoss, PCDLoss

Importing :mod:`fdbpl` itself is light: it loads no subpackage.
"""

from fdbpl._checks import set_value_checks
from fdbpl.errors import FDBPLError, InputValueError, ShapeError

__version__ = "0.1.0"

__all__ = ["FDBPLError", "InputValueError", "ShapeError", "__version__", "set_value_checks"]
