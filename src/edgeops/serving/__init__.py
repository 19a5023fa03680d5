"""Model serving: predictions over HTTP from the registry, and model containers.

* :func:`load_predictor` (``load.py``) loads a registered version's variant
  with its feature transforms; :class:`PredictorCache` keeps them for the API
  (``POST /api/models/{name}/{ref}/predict``).
* :func:`build_context` (``package.py``, ``edgeops package``) writes a container
  build context that serves one variant without the registry.
* ``standalone.py`` is the serving core both use: request checks, the input
  schema, predictions through the device agent's code, and the small HTTP
  server that the container runs as ``serve.py``.
"""

from .load import PredictorCache, load_predictor, pick_variant
from .package import PackageResult, build_context
from .standalone import InputError, ModelError, ServedModel, input_schema, parse_request

__all__ = [
    "InputError",
    "ModelError",
    "PackageResult",
    "PredictorCache",
    "ServedModel",
    "build_context",
    "input_schema",
    "load_predictor",
    "parse_request",
    "pick_variant",
]
