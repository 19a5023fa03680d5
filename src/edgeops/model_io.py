"""Model files in their own safe formats; no pickles cross a trust boundary.

* scikit-learn: skops (``.skops``); loading refuses types outside scikit-learn,
  numpy and scipy instead of running arbitrary code.
* Keras: the native ``.keras`` zip, loaded with ``safe_mode=True``.
* ONNX (``.onnx``) and TFLite (``.tflite``): data, not code.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from .errors import InvalidInput, MissingExtra

__all__ = [
    "MODEL_FORMATS",
    "check_model_bytes",
    "format_for_file",
    "load_keras",
    "load_sklearn",
    "save_keras",
    "save_sklearn",
]

MODEL_FORMATS = {".skops": "skops", ".keras": "keras", ".onnx": "onnx", ".tflite": "tflite"}
FLAVOR_OF_FORMAT = {"skops": "sklearn", "keras": "keras", "onnx": "onnx", "tflite": "tflite"}
_TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.")


def format_for_file(path: Path) -> str:
    fmt = MODEL_FORMATS.get(path.suffix.lower())
    if fmt is None:
        hint = (
            " (pickles are refused: they run code when loaded)"
            if path.suffix in (".pkl", ".pickle", ".joblib")
            else ""
        )
        raise InvalidInput(
            f"{path.name}: unknown model format{hint}; save it as .skops, .keras, .onnx or .tflite"
        )
    return fmt


def _untrusted(data: bytes) -> list[str]:
    from skops.io import get_untrusted_types

    return [t for t in get_untrusted_types(data=data) if not t.startswith(_TRUSTED_PREFIXES)]


def check_model_bytes(data: bytes, fmt: str) -> None:
    """Raise :class:`InvalidInput` unless ``data`` looks like a valid ``fmt`` model."""
    if not data:
        raise InvalidInput("the model file is empty")
    if fmt == "skops":
        try:
            bad = _untrusted(data)
        except Exception as exc:
            raise InvalidInput(f"not a skops file ({exc}); save it with skops.io.dump") from exc
        if bad:
            raise InvalidInput(
                f"the skops file holds types edgeops does not trust: {', '.join(bad[:3])}; "
                "use scikit-learn estimators only"
            )
    elif fmt == "keras":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                names = set(zf.namelist())
        except zipfile.BadZipFile as exc:
            raise InvalidInput("not a .keras file (not a zip); save it with model.save()") from exc
        if "config.json" not in names:
            raise InvalidInput("not a .keras file (no config.json); save it with model.save()")
    elif fmt == "tflite":
        if len(data) < 8 or data[4:8] != b"TFL3":
            raise InvalidInput("not a TFLite flatbuffer (no TFL3 identifier)")
    elif fmt == "onnx":
        try:
            import onnx
        except ModuleNotFoundError:
            return  # checked by onnxruntime when a variant is measured
        try:
            onnx.checker.check_model(onnx.load_model_from_string(data))
        except Exception as exc:
            raise InvalidInput(f"not a valid ONNX model: {str(exc).splitlines()[0]}") from exc
    else:
        raise InvalidInput(f"unknown model format {fmt!r}")


def save_sklearn(estimator: Any) -> bytes:
    from skops.io import dumps

    return dumps(estimator)


def load_sklearn(data: bytes) -> Any:
    from skops.io import loads

    bad = _untrusted(data)
    if bad:
        raise InvalidInput(f"refusing to load untrusted types: {', '.join(bad[:3])}")
    from skops.io import get_untrusted_types

    return loads(data, trusted=get_untrusted_types(data=data))


def save_keras(model: Any) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        model.save(path)
        return path.read_bytes()


def load_keras(data: bytes) -> Any:
    try:
        import keras
    except ModuleNotFoundError as exc:
        raise MissingExtra("tensorflow", "tensorflow") from exc
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        path.write_bytes(data)
        return keras.models.load_model(path, safe_mode=True, compile=False)
