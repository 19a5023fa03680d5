"""The end-to-end demo on embedded defaults: data → run → model version → model card.

It grows with the project; today it versions scikit-learn's bundled digits data,
trains a seeded model, records the run, registers the model, points
``production`` at it and prints the card.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DemoResult", "run_demo"]


@dataclass
class DemoResult:
    workspace: Path
    dataset: str
    run_id: str
    model: str
    accuracy: float


def run_demo(
    folder: Path, step: Callable[[str], Any] = lambda _msg: None, seed: int = 0
) -> DemoResult:
    """Run the demo in ``folder`` (a workspace is created there); ``step`` reports progress."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    from .datasets import digits_frame, write_table
    from .model_io import save_sklearn
    from .workspace import Workspace

    step("creating the workspace")
    ws, _ = Workspace.init(folder)
    try:
        step("versioning the digits data set")
        frame = digits_frame()
        path = Path(folder) / "data" / "digits.csv"
        write_table(frame, path)
        dv = ws.data.add(path, "digits", message="scikit-learn digits").version

        step("training a logistic regression (seeded split)")
        params = {"C": 0.2, "max_iter": 2000}
        split_seed = seed + 42
        X = frame.drop(columns="label").to_numpy(dtype="float32") / 16.0
        y = frame["label"].to_numpy()
        with ws.runs.track(
            name="digits-logreg",
            seeds={"split": split_seed, "model": seed},
            params=params,
            dataset_version_id=dv.id,
            config_name="demo",
            config_text=f"model: logistic_regression\nparams: {params}\nsplit_seed: {split_seed}\n",
        ) as run:
            Xtr, Xte, ytr, yte = train_test_split(
                X, y, test_size=0.25, random_state=split_seed, stratify=y
            )
            model = LogisticRegression(random_state=seed, **params).fit(Xtr, ytr)
            accuracy = float(model.score(Xte, yte))
            ws.runs.log(run.id, metrics={"accuracy": accuracy, "test_rows": len(yte)})

        step("registering the model")
        mv = ws.registry.register(
            "digits",
            save_sklearn(model),
            "skops",
            run_id=run.id,
            labels=[str(c) for c in model.classes_],
            description="demo: logistic regression on digits",
        )
        ws.registry.set_alias(mv.ref, "production")
        return DemoResult(Path(folder), dv.ref, run.id, mv.ref, accuracy)
    finally:
        ws.close()
