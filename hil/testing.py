"""Helpers for the tests that run the harness (tests/faults/test_lossy_network.py,
tests/test_hil.py): what to do where namespaces or Mosquitto are missing, and a
check that a run left no namespace behind."""

from __future__ import annotations

import os
import subprocess

__all__ = ["require_mosquitto", "require_namespaces", "run_namespaces"]


def _unavailable(why: str) -> None:
    import pytest

    if os.environ.get("CI"):
        pytest.fail(f"{why} (required in CI, where CI is set)")
    pytest.skip(why)


def require_namespaces() -> None:
    """Skip the test where network namespaces cannot be made; fail it in CI."""
    from hil.netns import namespaces_available

    ok, why = namespaces_available()
    if not ok:
        _unavailable(f"cannot create network namespaces: {why}")


def require_mosquitto() -> None:
    from edgeops.localbroker import find_mosquitto

    if find_mosquitto() is None:
        _unavailable("Mosquitto is not installed (apt-get install mosquitto)")


def run_namespaces(token: str) -> list[str]:
    """The namespaces of harness run ``token`` that exist now."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    names = [line.split()[0] for line in out.splitlines() if line.split()]
    return [n for n in names if n.startswith("hil-") and f"-{token}-" in n]
