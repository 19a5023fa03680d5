"""Model kinds the pipeline trains: scikit-learn estimators and small Keras networks.

Every trained model exposes ``scores(X)``: class scores of shape (n, classes),
float32. TensorFlow is imported only when a Keras kind is trained or loaded.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidInput, MissingExtra
from ..model_io import load_keras, load_sklearn, save_keras, save_sklearn

__all__ = ["Trained", "load_trained", "train"]

Progress = Callable[[int, int], None]  # (done, total)


@dataclass
class Trained:
    kind: str
    flavor: str  # "sklearn" or "keras"
    model: Any
    params: dict[str, Any]

    def scores(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if self.flavor == "sklearn":
            return self.model.predict_proba(X).astype(np.float32)
        if len(X) <= 64:  # a direct call avoids predict()'s per-call set-up
            return np.asarray(self.model(X, training=False), dtype=np.float32)
        return np.asarray(self.model.predict(X, verbose=0, batch_size=256), dtype=np.float32)

    def to_bytes(self) -> tuple[bytes, str]:
        if self.flavor == "sklearn":
            return save_sklearn(self.model), "skops"
        return save_keras(self.model), "keras"


_SKLEARN_DEFAULTS: dict[str, dict[str, Any]] = {
    "logistic_regression": {"C": 1.0, "max_iter": 2000},
    "random_forest": {"n_estimators": 50, "max_depth": 10},
    "gradient_boosting": {"n_estimators": 100, "max_depth": 3, "learning_rate": 0.1},
    "mlp": {"hidden_layer_sizes": [32], "max_iter": 500},
}
_KERAS_DEFAULTS: dict[str, dict[str, Any]] = {
    "keras_mlp": {
        "hidden": [64, 32],
        "epochs": 40,
        "batch_size": 32,
        "learning_rate": 0.003,
        "dropout": 0.0,
    },
    "keras_cnn1d": {
        "channels": 1,
        "filters": [16, 16],
        "kernel_size": 5,
        "dense": 32,
        "epochs": 30,
        "batch_size": 32,
        "learning_rate": 0.003,
    },
}


def _merged(defaults: dict[str, Any], params: dict[str, Any], kind: str) -> dict[str, Any]:
    unknown = sorted(set(params) - set(defaults))
    if unknown and kind in _KERAS_DEFAULTS:
        raise InvalidInput(
            f"pipeline field 'model.params' has unknown key {unknown[0]!r} for {kind}; "
            f"allowed: {', '.join(defaults)}"
        )
    return {**defaults, **params}


def _sklearn_estimator(kind: str, params: dict[str, Any], seed: int) -> Any:
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    cls = {
        "logistic_regression": LogisticRegression,
        "random_forest": RandomForestClassifier,
        "gradient_boosting": GradientBoostingClassifier,
        "mlp": MLPClassifier,
    }[kind]
    p = dict(params)
    if "hidden_layer_sizes" in p:
        p["hidden_layer_sizes"] = tuple(p["hidden_layer_sizes"])
    try:
        return cls(random_state=seed, **p)
    except TypeError as exc:
        raise InvalidInput(f"pipeline field 'model.params' does not fit {kind}: {exc}") from exc


def _keras() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import keras
        import tensorflow as tf
    except ModuleNotFoundError as exc:
        raise MissingExtra("tensorflow", "tensorflow") from exc
    return keras, tf


def _keras_model(kind: str, p: dict[str, Any], n_inputs: int, n_classes: int) -> Any:
    keras, _ = _keras()
    layers = keras.layers
    inputs = keras.Input(shape=(n_inputs,), name="features")
    if kind == "keras_mlp":
        x = inputs
        for units in p["hidden"]:
            x = layers.Dense(int(units), activation="relu")(x)
            if p["dropout"]:
                x = layers.Dropout(float(p["dropout"]))(x)
    else:
        channels = int(p["channels"])
        if channels < 1 or n_inputs % channels:
            raise InvalidInput(
                f"pipeline field 'model.params.channels' is {channels}, which does not divide "
                f"the {n_inputs} input features (window_raw features, channel after channel)"
            )
        length = n_inputs // channels
        x = layers.Reshape((channels, length))(inputs)
        x = layers.Permute((2, 1))(x)  # (length, channels)
        for filters in p["filters"]:
            x = layers.Conv1D(
                int(filters), int(p["kernel_size"]), activation="relu", padding="same"
            )(x)
            x = layers.MaxPooling1D(2)(x)
        x = layers.GlobalAveragePooling1D()(x)
        x = layers.Dense(int(p["dense"]), activation="relu")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="scores")(x)
    return keras.Model(inputs, outputs)


def train(
    kind: str,
    params: dict[str, Any],
    seed: int,
    X: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    progress: Progress | None = None,
) -> Trained:
    """Fit a model of ``kind`` on ``X`` (float32) and ``y`` (class indices 0..n_classes-1)."""
    if kind in _SKLEARN_DEFAULTS:
        p = _merged(_SKLEARN_DEFAULTS[kind], params, kind)
        est = _sklearn_estimator(kind, p, seed)
        try:
            est.fit(X, y)
        except ValueError as exc:
            raise InvalidInput(f"training {kind} failed: {exc}") from exc
        if progress:
            progress(1, 1)
        return Trained(kind, "sklearn", est, p)

    p = _merged(_KERAS_DEFAULTS[kind], params, kind)
    keras, tf = _keras()
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    model = _keras_model(kind, p, X.shape[1], n_classes)
    model.compile(
        optimizer=keras.optimizers.Adam(float(p["learning_rate"])),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    epochs = int(p["epochs"])

    class _Report(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            if progress:
                progress(epoch + 1, epochs)

    model.fit(
        X.astype(np.float32),
        y,
        epochs=epochs,
        batch_size=int(p["batch_size"]),
        verbose=0,
        shuffle=True,
        callbacks=[_Report()],
    )
    return Trained(kind, "keras", model, p)


def load_trained(kind: str, data: bytes, params: dict[str, Any] | None = None) -> Trained:
    """A registered original back as a :class:`Trained` (safe loaders only)."""
    if kind in _SKLEARN_DEFAULTS:
        return Trained(kind, "sklearn", load_sklearn(data), params or {})
    _keras()
    with contextlib.redirect_stdout(io.StringIO()):
        model = load_keras(data)
    return Trained(kind, "keras", model, params or {})
