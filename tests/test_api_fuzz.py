"""The HTTP API fuzzed from its own OpenAPI description with schemathesis, on SQLite and
PostgreSQL: no generated request, valid or not, gets a server error (5xx); and whatever is
generated, a request without a token gets 401 and a viewer's request to change something
gets 403.

schemathesis (4.x) generates the cases: each operation's parameters and bodies, both
schema-conforming ("positive") and violating it ("negative"), plus its coverage cases.
Path parameters are sometimes replaced with names that exist in the workspace (model
``har``, device ``d1``), so that the handlers behind the lookups run too.
"""

from __future__ import annotations

import numpy as np
import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from edgeops.api import create_app  # noqa: E402
from edgeops.api.access import PUBLIC  # noqa: E402
from edgeops.auth import Role, TokenStore  # noqa: E402
from edgeops.dashboard.sample_data import register_model, sample_message, state  # noqa: E402
from edgeops.monitoring.ingest import Ingestor  # noqa: E402

#: values of path parameters that name things in the workspace
KNOWN = {
    "name": ["har"],
    "ref": ["1", "2", "latest", "production"],
    "version": ["1"],
    "device": ["d1"],
}
FUZZ = settings(
    max_examples=25,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture
def api(ws):
    """The app on a workspace with model ``har`` (two versions), device d1 running version 1
    and one sample of it; a token of each role."""
    fleet = ws.settings.fleet
    model = register_model(ws, versions=2, seed=0)
    v1 = {**model.model_of(1), "seq": 1}
    row = np.full(6, 0.5)
    out = model.predict(row[None, :])[0]
    Ingestor(ws.db, fleet).ingest(
        [
            state(fleet, "d1", model=v1, accepted_seq=1),
            sample_message(fleet, "d1", 1, v1, row, out, 1.0),
        ]
    )
    tokens = TokenStore(ws.db)
    issued = {role: tokens.create(f"fuzz-{role}", role)[0] for role in Role}
    return create_app(ws), issued


@pytest.fixture
def api_schema(api):
    app, _ = api
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)

    @schema.hook
    def flatmap_path_parameters(context, path_parameters):
        known = {k: st.sampled_from(KNOWN[k]) for k in path_parameters or {} if k in KNOWN}
        if not known:
            return st.just(path_parameters)
        generated = {k: st.just(v) for k, v in path_parameters.items()}
        return st.one_of(st.just(path_parameters), st.fixed_dictionaries({**generated, **known}))

    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@FUZZ
@schema.parametrize()
def test_no_request_gets_a_server_error(case, api):
    _, issued = api
    case.call_and_validate(
        headers={"Authorization": f"Bearer {issued[Role.ADMIN]}"}, checks=[not_a_server_error]
    )


@settings(FUZZ, max_examples=5)
@schema.parametrize()
def test_requests_without_a_token_or_role_are_refused(case, api):
    _, issued = api
    method = case.method.upper()
    public = (method, case.operation.path) in PUBLIC
    headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    case.headers = headers  # whatever schemathesis made up for the security scheme: none
    anonymous = case.call()
    if method != case.operation.method.upper():  # a method the path does not serve
        assert anonymous.status_code == 405, anonymous.text
        return
    assert anonymous.status_code == (200 if public else 401), anonymous.text
    if method != "GET":
        viewer = case.call(headers={"Authorization": f"Bearer {issued[Role.VIEWER]}"})
        if "Authorization" not in viewer.request.headers:  # a "missing Authorization" case:
            assert viewer.status_code == 401, viewer.text  # schemathesis drops the header
            return
        assert viewer.status_code == 403, viewer.text
        assert "needs the operator role" in viewer.json()["error"]


def _url(path: str, value: str = "a%00b") -> str:
    for name, known in KNOWN.items():
        path = path.replace("{" + name + "}", known[0])
    return path.replace("{run_id}", value).replace("{rollout_id}", value)


def test_a_nul_character_anywhere_is_a_client_error(api):
    """PostgreSQL refuses NUL in text; that is the request's fault (422), not a store
    outage (503). Every path and query parameter and the labels body, on both stores."""
    from fastapi.testclient import TestClient

    app, issued = api
    admin = {"Authorization": f"Bearer {issued[Role.ADMIN]}"}
    with TestClient(app, raise_server_exceptions=False) as client:
        spec = client.get("/openapi.json").json()
        sent = 0
        for path, ops in spec["paths"].items():
            for method, op in ops.items():
                params = [p for p in op.get("parameters", []) if p["in"] in ("path", "query")]
                for p in params:
                    url = _url(path)
                    if p["in"] == "path":
                        url = path.replace("{" + p["name"] + "}", "a%00b")
                        url = _url(url)
                    query = {p["name"]: "a\x00b"} if p["in"] == "query" else {}
                    body = {} if method == "post" else None
                    r = client.request(method, url, params=query, json=body, headers=admin)
                    assert r.status_code < 500, (method, url, query, r.text)
                    sent += 1
        assert sent > 30
        r = client.post("/api/labels", json={"sample_id": "d1/\x00", "label": "x"}, headers=admin)
        assert r.status_code in (404, 422) and r.json()["kind"] != "StoreUnavailable", r.text


def test_a_malformed_body_without_the_role_gets_401_or_403_not_422(api):
    """FastAPI parses a JSON body before it runs dependencies: the role check still wins."""
    from fastapi.testclient import TestClient

    app, issued = api
    bad = {"content": b"{", "headers": {"content-type": "application/json"}}
    with TestClient(app) as client:
        for path in ("/api/labels", "/api/models/har/1/predict"):
            anonymous = client.post(path, **bad)
            assert anonymous.status_code == 401 and "needs a token" in anonymous.text
            assert anonymous.headers["www-authenticate"] == 'Bearer realm="edgeops"'
            bad_token = {"Authorization": "Bearer eo_" + "x" * 43}
            r = client.post(path, content=b"{", headers={**bad["headers"], **bad_token})
            assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
            viewer = {"Authorization": f"Bearer {issued[Role.VIEWER]}"}
            r = client.post(path, content=b"{", headers={**bad["headers"], **viewer})
            assert r.status_code == 403 and "needs the operator role" in r.json()["error"]
            operator = {"Authorization": f"Bearer {issued[Role.OPERATOR]}"}
            r = client.post(path, content=b"{", headers={**bad["headers"], **operator})
            assert r.status_code == 422 and r.json()["kind"] == "InvalidInput"
