"""edgeops: take a model from data to a fleet of edge devices and keep it healthy there.

The public entry points are the CLI (``edgeops --help``) and these library objects::

    from edgeops import Workspace
    ws = Workspace.open()            # finds edgeops.toml, or uses EDGEOPS_* variables
    ws.data.add("readings.csv", name="readings")
    ws.registry.get_version("wrist", "production")
"""

from __future__ import annotations

__version__ = "0.1.0"

from .config import Settings
from .errors import EdgeopsError
from .workspace import Workspace

__all__ = ["EdgeopsError", "Settings", "Workspace", "__version__"]
