"""``python -m edgeops_agent``: the same as the ``edgeops-agent`` command."""

import sys

from .cli import main

sys.exit(main())
