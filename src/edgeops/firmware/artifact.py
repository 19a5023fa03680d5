"""The loadable emlearn artifact ("EOML"): a scikit-learn model as bytes a firmware loads.

Over MQTT a microcontroller needs the model as data, not as C to compile. This
module writes the format ``templates/core/edgeops_model_emlearn.c`` reads
(docs/firmware.md, "Artifact format"), little-endian throughout::

    header (32 bytes)  "EOML", u16 format 1, u16 kind (1 trees, 2 MLP),
                       u32 n_features, u32 n_classes, u32 a, u32 b, u32 c, u32 d
    trees  (a, b, c, d = n_nodes, n_trees, n_leaves, leaf_bits)
           nodes   n_nodes x (i32 feature, f32 threshold, i32 left, i32 right)
           roots   n_trees x i32
           leaves  leaf_bits 8: n_classes x u8 per leaf (class proportions x 255)
                   leaf_bits 0: u16 class per leaf (a single tree: majority vote)
    MLP    (a = n_layers; b, c, d = 0)
           layers  n_layers x (u32 n_inputs, u32 n_outputs, u32 activation, u32 0)
           then per layer: f32 weights[n_inputs * n_outputs] (w[o + i * n_outputs]),
                           f32 biases[n_outputs]

Trees are emlearn's own tables (``emlearn.convert(...).forest_``) with each
threshold moved exactly as :mod:`edgeops.convert.emlearn_c` moves it for the
inline C (``x <= t`` in scikit-learn is ``x < u`` in emlearn's C, ``u`` the next
float32 above ``t``), so the firmware's class equals the ``c-emlearn`` variant's
bit for bit. MLP weights are scikit-learn's float32 ``coefs_`` and
``intercepts_`` in the layout of emlearn's ``eml_net``. Format changes bump the
version; readers refuse versions they do not know.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidInput

__all__ = [
    "ACTIVATIONS",
    "FORMAT_VERSION",
    "KIND_MLP",
    "KIND_TREES",
    "MAGIC",
    "ArtifactHeader",
    "emlearn_loadable",
    "read_header",
]

MAGIC = b"EOML"
FORMAT_VERSION = 1
KIND_TREES = 1
KIND_MLP = 2
_HEADER = struct.Struct("<4sHHIIIIII")  # 32 bytes
# emlearn's EmlNetActivationFunction values (eml_net_common.h)
ACTIVATIONS = {"identity": 0, "relu": 1, "logistic": 2, "softmax": 3, "tanh": 4}
_TREES = ("RandomForestClassifier", "ExtraTreesClassifier", "DecisionTreeClassifier")
_NETS = ("MLPClassifier",)


@dataclass(frozen=True)
class ArtifactHeader:
    kind: int
    n_features: int
    n_classes: int
    fields: tuple[int, int, int, int]


def read_header(data: bytes) -> ArtifactHeader:
    """The header of an EOML artifact; :class:`InvalidInput` if it is not one this reads."""
    if len(data) < _HEADER.size or data[:4] != MAGIC:
        raise InvalidInput("not an EOML artifact (the loadable emlearn form)")
    _magic, version, kind, n_features, n_classes, a, b, c, d = _HEADER.unpack_from(data)
    if version != FORMAT_VERSION:
        raise InvalidInput(f"EOML format {version}; this edgeops reads format {FORMAT_VERSION}")
    return ArtifactHeader(kind, n_features, n_classes, (a, b, c, d))


def _trees(estimator: Any) -> bytes:
    from ..convert.emlearn_c import _emlearn, _left_of

    forest = hasattr(estimator, "estimators_")
    leaf_bits = 8 if forest else 0
    model = _emlearn().convert(estimator, method="inline", dtype="float", leaf_bits=leaf_bits)
    nodes, roots, leaves = model.forest_
    n_classes = len(estimator.classes_)
    body = bytearray()
    for feature, threshold, left, right in nodes:
        body += struct.pack(
            "<ifii", int(feature), _left_of(float(threshold)), int(left), int(right)
        )
    for root in roots:
        body += struct.pack("<i", int(root))
    for leaf in leaves:
        if leaf_bits == 8:
            values = np.asarray(leaf, dtype=np.uint8)
            if values.shape != (n_classes,):
                raise InvalidInput("emlearn returned a leaf without one proportion per class")
            body += values.tobytes()
        else:
            body += struct.pack("<H", int(leaf))
    head = _HEADER.pack(
        MAGIC,
        FORMAT_VERSION,
        KIND_TREES,
        int(estimator.n_features_in_),
        n_classes,
        len(nodes),
        len(roots),
        len(leaves),
        leaf_bits,
    )
    return head + bytes(body)


def _mlp(estimator: Any) -> bytes:
    weights = [np.asarray(w, dtype="<f4") for w in estimator.coefs_]
    biases = [np.asarray(b, dtype="<f4") for b in estimator.intercepts_]
    names = [estimator.activation] * (len(weights) - 1) + [estimator.out_activation_]
    if any(n not in ACTIVATIONS for n in names):
        raise InvalidInput(f"emlearn runs {', '.join(ACTIVATIONS)} activations, not {names}")
    table = b"".join(
        struct.pack("<IIII", w.shape[0], w.shape[1], ACTIVATIONS[n], 0)
        for w, n in zip(weights, names, strict=True)
    )
    data = b"".join(
        np.ascontiguousarray(w).tobytes() + b.tobytes()
        for w, b in zip(weights, biases, strict=True)
    )
    head = _HEADER.pack(
        MAGIC,
        FORMAT_VERSION,
        KIND_MLP,
        int(estimator.n_features_in_),
        len(estimator.classes_),
        len(weights),
        0,
        0,
        0,
    )
    return head + table + data


def emlearn_loadable(estimator: Any) -> bytes:
    """The EOML bytes of a fitted scikit-learn forest, tree or MLP classifier."""
    kind = type(estimator).__name__
    if not hasattr(estimator, "classes_"):
        raise InvalidInput(f"the {kind} is not fitted")
    if kind in _TREES:
        return _trees(estimator)
    if kind in _NETS:
        return _mlp(estimator)
    supported = ", ".join(_TREES + _NETS)
    raise InvalidInput(f"no loadable emlearn form for {kind}; supported: {supported}")
