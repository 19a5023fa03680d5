"""``python -m hil TARGETS.toml ...``: the same as ``hil/run``."""

import sys

from hil.cli import main

sys.exit(main())
