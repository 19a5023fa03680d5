"""The edgeops wire protocol and everything both sides must compute identically.

This package is pure: numpy and the standard library only, no I/O. The server
(``edgeops``) and the device agent (``edgeops_agent``) both import it, so the
statistics a device reports and the baseline they are compared with, and the
feature transforms a device runs and the ones training ran, come from one code.
"""

PROTOCOL_VERSION = 1

__all__ = ["PROTOCOL_VERSION"]
