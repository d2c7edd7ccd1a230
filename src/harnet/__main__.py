"""``python -m harnet`` (used by ``torchrun ... -m harnet train``)."""

import sys

from harnet.cli import main

sys.exit(main())
