"""A missing map library is one line naming the extra to install."""

from __future__ import annotations

import pytest

from harnet.data.geo_extra import GEO_INSTALL, require
from harnet.utils.errors import UsageError


def test_a_missing_module_names_the_geo_extra() -> None:
    with pytest.raises(UsageError, match=r"harnet data tiles needs no_such_geo_lib .*pip install \"harnet\[geo\]\""):
        require("no_such_geo_lib.sub")
    assert GEO_INSTALL == 'pip install "harnet[geo]"'
    assert require("json").dumps([1]) == "[1]"
