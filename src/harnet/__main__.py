"""``python -m harnet`` (used by ``torchrun ... -m harnet train``)."""

import sys

from harnet.tools.cli import main

sys.exit(main())
