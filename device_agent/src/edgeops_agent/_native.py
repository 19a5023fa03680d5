"""The optional C extension ``edgeops_agent._fastpath``, when it is built and allowed.

``load_fastpath()`` is the module, or None: not built (no C compiler at install time),
numpy's layout not the one it was checked against, or ``EDGEOPS_PURE_PYTHON=1`` (the
pure-Python code, same results). Each user keeps its own reference, so that a test
can switch one off alone.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["load_fastpath"]


def load_fastpath() -> Any:
    if os.environ.get("EDGEOPS_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        from . import _fastpath
    except ImportError:  # not built, or numpy's layout changed
        return None
    return _fastpath
