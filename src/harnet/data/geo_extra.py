"""The optional map libraries (the ``[geo]`` extra), imported on use with a one-line error naming the extra.

``harnet data tiles`` needs rasterio, geopandas (with pyogrio), shapely and pyproj; the rest of harnet does not,
so they stay out of the core dependencies and a missing one is a sentence the user can act on, not a traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from harnet.utils.errors import UsageError

GEO_INSTALL = 'pip install "harnet[geo]"'


def require(module: str, purpose: str = "harnet data tiles") -> ModuleType:
    """``import module``, or a :class:`UsageError` saying that ``purpose`` needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise UsageError(f"{purpose} needs {module.split('.')[0]} ({e.msg}): {GEO_INSTALL}") from None
