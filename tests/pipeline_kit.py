"""Workspaces with models trained by the real pipeline: the ``wrist`` feature spec over the
accelerometer windows of :func:`edgeops.datasets.sensor_windows`, the ``har`` pipeline
document, and a workspace holding two versions of it."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

AXES = ("ax", "ay", "az")


def wrist_features(length: int = 64) -> dict:
    """``wrist``: the window statistics of ax, ay and az (windows of ``length``), scaled."""
    return {
        "name": "wrist",
        "inputs": [{"name": a, "kind": "window", "length": length} for a in AXES],
        "steps": [*({"op": "window_stats", "input": a} for a in AXES), {"op": "scale"}],
    }


def har_pipeline(model: dict, export: list[str], **more: Any) -> dict:
    """The pipeline document of ``har``: ``sensors@1`` through ``wrist@1`` into ``model``."""
    return {
        "name": "har",
        "data": "sensors@1",
        "label": "label",
        "features": "wrist@1",
        "model": model,
        "export": export,
        **more,
    }


def trained_workspace(
    home: Path,
    kind: str,
    params: dict,
    export: list[str],
    *,
    n_per_class: int = 60,
    length: int = 64,
    each: Callable[[Any, str], object] | None = None,
) -> Path:
    """A workspace at ``home`` with ``sensors@1`` (``sensor_windows``, data seed 5),
    ``wrist@1`` and two versions of ``har`` (model seeds 0 and 1: ``har@1``, ``har@2``)
    trained by the pipeline, each exported to ``export``; ``each(ws, ref)`` runs after each
    version is registered. The workspace is closed; its home is returned."""
    from edgeops import Workspace
    from edgeops.datasets import sensor_windows, write_table
    from edgeops.pipeline import parse_pipeline
    from edgeops.pipeline.run import run_pipeline

    ws, _ = Workspace.init(home)
    try:
        write_table(sensor_windows(n_per_class=n_per_class, length=length, seed=5), home / "s.csv")
        ws.data.add(home / "s.csv", "sensors")
        ws.features.add(wrist_features(length))
        for seed in (0, 1):
            model = {"kind": kind, "params": copy.deepcopy(params), "seed": seed}
            doc = har_pipeline(model, export)
            run = run_pipeline(ws, parse_pipeline(doc, yaml.safe_dump(doc)))
            assert run.status == "registered"
            if each is not None:
                each(ws, f"har@{1 + seed}")
    finally:
        ws.close()
    return home
