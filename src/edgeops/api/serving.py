"""Predictions: ``POST /api/models/{name}/{ref}/predict`` with a registered version's variant.

The reference is resolved on every request (an alias that moved is served from
its new version at once); loaded models are kept per (model, version, variant)
on the app. Request and response are those of :mod:`edgeops.serving.standalone`,
which the containers of ``edgeops package`` serve too.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool

from ..errors import EdgeopsError, InvalidInput
from ..serving import InputError, ModelError, PredictorCache, parse_request
from .access import OPERATOR
from .deps import workspace

router = APIRouter(tags=["serving"], dependencies=[OPERATOR])
_CACHE_LOCK = threading.Lock()

_NUMBERS = {"type": "array", "items": {"type": "number"}}
_SAMPLE = {
    "oneOf": [
        {"type": "object", "description": "raw fields, through the model's feature transforms"},
        {**_NUMBERS, "description": "a feature vector, already transformed"},
    ]
}
_REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "inputs": {"type": "array", "items": _SAMPLE, "minItems": 1},
                    "input": _SAMPLE,
                    "variant": {"type": "string", "description": "default: see docs/serving.md"},
                },
                "additionalProperties": False,
            },
            "example": {"inputs": [{"ax": [0.01, 0.02], "temp": 21.5}], "variant": "onnx-f32"},
        }
    },
}


def _cache(request: Request) -> PredictorCache:
    state = request.app.state
    with _CACHE_LOCK:
        cache = getattr(state, "predictors", None)
        if cache is None:
            cache = state.predictors = PredictorCache()
    return cache


def _predict(ws: Any, cache: PredictorCache, ref: str, body: Any) -> dict[str, Any]:
    try:
        inputs, variant = parse_request(body)
        served = cache.get(ws, ref, variant)
        return served.response(inputs)
    except InputError as exc:
        raise InvalidInput(str(exc)) from exc
    except ModelError as exc:
        raise EdgeopsError(str(exc)) from exc


@router.post("/models/{name}/{ref}/predict", openapi_extra={"requestBody": _REQUEST_BODY})
async def predict(
    name: str, ref: str, request: Request, ws: Any = Depends(workspace)
) -> dict[str, Any]:
    """Predictions of a version (``ref``: number, alias or ``latest``) for raw samples or
    feature vectors: ``{"model", "variant", "predictions": [{"label", "scores"}, ...]}``."""
    raw = await request.body()
    try:
        body = json.loads(raw or b"null")
    except ValueError as exc:
        raise InvalidInput(f"the request body is not valid JSON: {str(exc)[:80]}") from exc
    return await run_in_threadpool(_predict, ws, _cache(request), f"{name}@{ref}", body)
