"""API tokens and roles on a real store (SQLite and PostgreSQL): tokens are hashed at rest,
bad tokens get 401, low roles 403, and every route of the app has its expected role."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from edgeops.api import create_app
from edgeops.api.access import PUBLIC, check_routes, endpoints, require
from edgeops.auth import PREFIX, Role, TokenStore, Unauthenticated, hash_token, parse_duration
from edgeops.cli import app as cli
from edgeops.cli.serve import is_loopback
from edgeops.dashboard.sample_data import register_model, sample_message, state
from edgeops.errors import Conflict, InvalidInput, NotFound
from edgeops.monitoring.ingest import Ingestor
from edgeops.monitoring.store import MonitoringStore

VIEWER, OPERATOR, ADMIN = Role.VIEWER, Role.OPERATOR, Role.ADMIN
#: the least role of every method and path the app serves; None: public
EXPECTED: dict[tuple[str, str], Role | None] = {
    ("GET", "/"): None,
    ("GET", "/static/{name}"): None,
    ("GET", "/api/health"): None,
    ("GET", "/api/models"): VIEWER,
    ("GET", "/api/models/{name}/versions"): VIEWER,
    ("GET", "/api/models/{name}/{ref}"): VIEWER,
    ("GET", "/api/models/{name}/{ref}/lineage"): VIEWER,
    ("GET", "/api/datasets"): VIEWER,
    ("GET", "/api/datasets/{name}/{version}"): VIEWER,
    ("GET", "/api/features"): VIEWER,
    ("GET", "/api/runs"): VIEWER,
    ("GET", "/api/runs/{run_id}"): VIEWER,
    ("GET", "/api/fleet/devices"): VIEWER,
    ("GET", "/api/fleet/devices/{device}"): VIEWER,
    ("GET", "/api/rollouts"): VIEWER,
    ("GET", "/api/rollouts/{rollout_id}"): VIEWER,
    ("GET", "/api/models/{name}/{ref}/drift"): VIEWER,
    ("GET", "/api/models/{name}/{ref}/drift/timeline"): VIEWER,
    ("GET", "/api/models/{name}/{ref}/distribution"): VIEWER,
    ("GET", "/api/models/{name}/{ref}/telemetry"): VIEWER,
    ("GET", "/api/models/{name}/{ref}/skew"): VIEWER,
    ("GET", "/api/alerts"): VIEWER,
    ("GET", "/api/samples"): VIEWER,
    ("GET", "/api/monitoring/counters"): VIEWER,
    ("GET", "/api/overview"): VIEWER,
    ("GET", "/metrics"): VIEWER,
    ("POST", "/api/models/{name}/{ref}/alerts/evaluate"): OPERATOR,
    ("POST", "/api/labels"): OPERATOR,
    ("POST", "/api/models/{name}/{ref}/predict"): OPERATOR,
    ("GET", "/api/audit"): ADMIN,
}
#: FastAPI's own pages: the API's description, no data
DOCS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
PARAMS = {
    "name": "har",
    "ref": "1",
    "version": "1",
    "run_id": "nope",
    "device": "d1",
    "rollout_id": "r-00000000",
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def fleet(ws):
    """Model ``har`` with two versions, device d1 running version 1 and one sample of it."""
    fleet = ws.settings.fleet
    model = register_model(ws, versions=2, seed=0)
    v1 = {**model.model_of(1), "seq": 1}
    row = np.full(6, 0.5)
    out = model.predict(row[None, :])[0]
    res = Ingestor(ws.db, fleet).ingest(
        [
            state(fleet, "d1", model=v1, accepted_seq=1),
            sample_message(fleet, "d1", 1, v1, row, out, 1.0),
        ]
    )
    assert res.accepted["samples"] == 1
    tokens = TokenStore(ws.db)
    issued = {role: tokens.create(f"t-{role}", role)[0] for role in Role}
    with TestClient(create_app(ws)) as client:
        yield ws, client, issued


def test_tokens_are_random_prefixed_and_only_their_hash_is_stored(ws, db_url):
    from sqlalchemy import select

    from edgeops.store.schema import ApiToken, Base

    tokens = TokenStore(ws.db)
    made = [
        tokens.create(name, role) for name, role in (("a", VIEWER), ("b", OPERATOR), ("c", ADMIN))
    ]
    for token, info in made:
        assert re.fullmatch(r"eo_[A-Za-z0-9_-]{43}", token), token
        assert (info.created_by, info.expires_at, info.revoked_at) == ("tester", None, None)
    assert len({t for t, _ in made}) == 3
    with ws.db.session() as s:
        stored = dict(s.execute(select(ApiToken.name, ApiToken.token_sha256)).all())
        dump = json.dumps(
            [
                [list(map(str, row)) for row in s.execute(select(table)).all()]
                for table in Base.metadata.sorted_tables
            ]
        )
    assert stored == {i.name: hashlib.sha256(t.encode()).hexdigest() for t, i in made}
    for token, _ in made:
        assert token not in dump and token[len(PREFIX) :] not in dump
        assert token[len(PREFIX) : len(PREFIX) + 12] not in dump
    if db_url.startswith("sqlite"):  # the database files themselves, write-ahead log too
        path = db_url[len("sqlite:///") :]
        raw = b"".join(p.read_bytes() for p in (Path(path), Path(f"{path}-wal")) if p.exists())
        assert all(t[len(PREFIX) :].encode() not in raw for t, _ in made)
        assert hash_token(made[0][0]).encode() in raw


def test_verify_expiry_revocation_and_last_use(ws):
    tokens = TokenStore(ws.db)
    t0 = datetime(2030, 1, 1, tzinfo=timezone.utc)
    token, info = tokens.create("grafana", VIEWER, parse_duration("90d"), now=t0)
    assert info.expires_at == t0 + timedelta(days=90)
    assert tokens.verify(token, now=t0).last_used_at == t0
    assert tokens.verify(token, now=t0 + timedelta(seconds=30)).last_used_at == t0  # to the minute
    later = t0 + timedelta(seconds=61)
    assert tokens.verify(token, now=later).last_used_at == later
    with pytest.raises(Unauthenticated, match="token 'grafana' expired at 2030-04-01 00:00 UTC"):
        tokens.verify(token, now=t0 + timedelta(days=90))
    assert [i.status(t0 + timedelta(days=91)) for i in tokens.list()] == ["expired"]
    with pytest.raises(Conflict, match="revoke it first"):
        tokens.create("grafana", VIEWER)
    assert tokens.revoke("grafana").revoked_at is not None
    with pytest.raises(Unauthenticated, match="token 'grafana' was revoked"):
        tokens.verify(token, now=t0)
    with pytest.raises(NotFound):
        tokens.revoke("grafana")
    again, _ = tokens.create("grafana", OPERATOR)  # the name is free again once revoked
    assert tokens.verify(again).role == OPERATOR
    assert [(i.name, str(i.role), i.status()) for i in tokens.list()] == [
        ("grafana", "viewer", "revoked"),
        ("grafana", "operator", "active"),
    ]
    with pytest.raises(Unauthenticated, match="unknown token"):
        tokens.verify(PREFIX + "x" * 43)
    with pytest.raises(Unauthenticated, match="not an edgeops API token"):
        tokens.verify("x" * 46)
    with pytest.raises(InvalidInput, match="token name"):
        tokens.create("-bad name", VIEWER)


@pytest.mark.parametrize(
    ("text", "delta"),
    [("30m", timedelta(minutes=30)), ("12h", timedelta(hours=12)), ("90d", timedelta(days=90))],
)
def test_durations(text, delta):
    assert parse_duration(text) == delta
    assert parse_duration("2w") == timedelta(days=14)
    for bad in ("0d", "90", "1y", "-1d", ""):
        with pytest.raises(InvalidInput):
            parse_duration(bad)


def test_roles_are_ordered_and_parsed():
    assert VIEWER < OPERATOR < ADMIN
    assert [Role.parse(x) for x in ("viewer", "Operator", " ADMIN ")] == [VIEWER, OPERATOR, ADMIN]
    with pytest.raises(InvalidInput, match="use one of viewer, operator, admin"):
        Role.parse("root")


def test_missing_wrong_expired_and_revoked_tokens_get_401(fleet):
    ws, client, issued = fleet
    tokens = TokenStore(ws.db)
    old, _ = tokens.create(
        "old", VIEWER, timedelta(minutes=1), now=datetime(2020, 1, 1, tzinfo=timezone.utc)
    )
    gone, _ = tokens.create("gone", ADMIN)
    tokens.revoke("gone")
    cases = [
        ({}, "this API needs a token", 'Bearer realm="edgeops"'),
        (
            {"Authorization": "Basic dXNlcjpwYXNz"},
            "this API needs a token",
            'Bearer realm="edgeops"',
        ),
        (bearer(PREFIX + "A" * 43), "unknown token", 'error="invalid_token"'),
        (bearer(issued[VIEWER] + "x"), "unknown token", 'error="invalid_token"'),
        (bearer("secret"), "not an edgeops API token", 'error="invalid_token"'),
        (bearer(old), "token 'old' expired at 2020-01-01 00:01 UTC", 'error="invalid_token"'),
        (bearer(gone), "token 'gone' was revoked", 'error="invalid_token"'),
    ]
    for headers, message, challenge in cases:
        for method, path in (("GET", "/api/models"), ("GET", "/metrics"), ("POST", "/api/labels")):
            r = client.request(method, path, headers=headers, json={})
            assert r.status_code == 401, (headers, path)
            body = r.json()
            assert body["kind"] == "Unauthenticated" and body["error"].startswith(message)
            assert "\n" not in body["error"]
            assert r.headers["www-authenticate"].startswith('Bearer realm="edgeops"')
            assert challenge in r.headers["www-authenticate"]


def test_viewer_cannot_post_and_operator_labels(fleet):
    ws, client, issued = fleet
    store = MonitoringStore(ws.db, ws.settings.fleet)
    body = {"sample_id": "d1/b1/1", "label": "walk"}
    r = client.post("/api/labels", json=body, headers=bearer(issued[VIEWER]))
    assert r.status_code == 403
    assert r.json() == {
        "error": "POST /api/labels needs the operator role; token 't-viewer' has the viewer role",
        "kind": "Forbidden",
    }
    assert [s.label for s in store.samples(None, limit=10)] == [None]
    r = client.post("/api/models/har/1/alerts/evaluate", headers=bearer(issued[VIEWER]))
    assert r.status_code == 403
    r = client.post("/api/labels", json=body, headers=bearer(issued[OPERATOR]))
    assert (r.status_code, r.json()) == (200, {**body, "status": "added"})
    assert [s.label for s in store.samples(None, limit=10)] == ["walk"]
    r = client.post("/api/labels", json={**body, "label": "run"}, headers=bearer(issued[ADMIN]))
    assert (r.status_code, r.json()["status"]) == (200, "changed")
    r = client.get("/api/audit", headers=bearer(issued[OPERATOR]))
    assert r.status_code == 403 and "needs the admin role" in r.json()["error"]
    got = client.get("/api/audit", headers=bearer(issued[ADMIN]))
    assert got.status_code == 200
    assert [(e["action"], e["subject"]) for e in got.json()][:3] == [
        ("token.create", "t-admin"),
        ("token.create", "t-operator"),
        ("token.create", "t-viewer"),
    ]
    assert TokenStore(ws.db).list()[0].last_used_at is not None


def test_every_route_has_its_expected_role(fleet):
    _, client, issued = fleet
    served = endpoints(client.app.routes)
    api = {(e.method, e.path): e.role for e in served if e.api}
    # a new route must be added to EXPECTED (and so be given a role) before this passes
    assert api == EXPECTED
    assert {e.path for e in served if not e.api} == DOCS
    assert {k for k, v in EXPECTED.items() if v is None} == PUBLIC
    spec = client.get("/openapi.json").json()
    in_spec = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    assert in_spec == {k for k in EXPECTED if k[0] != "GET" or k[1] not in ("/", "/static/{name}")}
    for (method, path), role in EXPECTED.items():
        if path in ("/", "/static/{name}"):
            continue
        op = spec["paths"][path][method.lower()]
        assert op.get("security") == (None if role is None else [{"token": []}]), path

    for (method, path), least in EXPECTED.items():
        url = path.format(**{**PARAMS, **({"name": "dashboard.js"} if "static" in path else {})})
        body = {} if method == "POST" else None
        anonymous = client.request(method, url, json=body)
        if least is None:
            assert anonymous.status_code == 200, url
            continue
        assert anonymous.status_code == 401, url
        for role in Role:
            r = client.request(method, url, json=body, headers=bearer(issued[role]))
            if role < least:
                assert r.status_code == 403, (url, role)
                assert r.json()["error"].startswith(f"{method} {url} needs the {least} role")
            else:
                assert r.status_code not in (401, 403), (url, role, r.text)
                assert r.status_code < 500, (url, role, r.text)


def test_a_route_without_a_role_is_refused_when_the_app_is_built():
    from fastapi import APIRouter, Depends, FastAPI

    app = FastAPI()
    router = APIRouter()

    @router.get("/api/forgotten")
    def forgotten() -> dict:
        return {}

    @router.post("/api/guarded", dependencies=[Depends(require(OPERATOR))])
    def guarded() -> dict:
        return {}

    app.include_router(router)
    with pytest.raises(RuntimeError, match=r"routes without a role: GET /api/forgotten;"):
        check_routes(app.routes)


def test_without_auth_every_request_acts_as_admin(ws):
    with TestClient(create_app(ws, auth=False)) as client:
        assert client.get("/api/health").json()["auth"] is False
        assert client.get("/api/audit").status_code == 200
        assert client.get("/metrics").status_code == 200
        assert client.app.state.no_auth_principal.name == "tester (no auth)"
    with TestClient(create_app(ws)) as client:
        assert client.get("/api/health").json()["auth"] is True


def test_cli_tokens_create_list_revoke(ws):
    runner = CliRunner()
    home = ["-w", str(ws.settings.home)]

    def run(*args, code=0):
        r = runner.invoke(cli, [*home, "tokens", *args])
        assert r.exit_code == code, r.output
        return r

    made = json.loads(
        run("create", "grafana", "--role", "viewer", "--expires", "90d", "--json").output
    )
    assert re.fullmatch(r"eo_[A-Za-z0-9_-]{43}", made["token"])
    created = datetime.fromisoformat(made["created_at"])
    assert datetime.fromisoformat(made["expires_at"]) - created == timedelta(days=90)
    assert (made["name"], made["role"], made["status"], made["created_by"]) == (
        "grafana",
        "viewer",
        "active",
        "tester",
    )
    assert TokenStore(ws.db).verify(made["token"]).name == "grafana"
    plain = run("create", "ci", "--role", "operator")
    assert re.search(r"^eo_[A-Za-z0-9_-]{43}$", plain.output, re.M)
    assert "shown only now" in plain.output
    assert "already" not in run("create", "ci", code=4).output
    assert "unknown role 'root'" in run("create", "x", "--role", "root", code=2).output
    assert "not a positive duration" in run("create", "x", "--expires", "90", code=2).output
    listed = json.loads(run("list", "--json").output)
    assert [(t["name"], t["role"], t["status"]) for t in listed] == [
        ("grafana", "viewer", "active"),
        ("ci", "operator", "active"),
    ]
    assert "token" not in listed[0] and made["token"] not in run("list").output
    revoked = json.loads(run("revoke", "grafana", "--json").output)
    assert (revoked["status"], revoked["revoked_at"] is not None) == ("revoked", True)
    assert "no unrevoked token named 'grafana'" in run("revoke", "grafana", code=3).output
    with pytest.raises(Unauthenticated):
        TokenStore(ws.db).verify(made["token"])


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.20", False),
        ("edge.example.com", False),
    ],
)
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_serve_refuses_no_auth_off_loopback_and_says_so_on_it(ws, monkeypatch):
    import uvicorn

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.append((app, kw)))
    runner = CliRunner()
    home = ["-w", str(ws.settings.home)]
    r = runner.invoke(cli, [*home, "serve", "--no-auth", "--host", "0.0.0.0"])
    assert r.exit_code == 2
    assert "--no-auth is for local development on 127.0.0.1 only, not --host 0.0.0.0" in r.output
    assert served == []
    r = runner.invoke(cli, [*home, "serve", "--no-auth"])
    assert r.exit_code == 0, r.output
    assert "AUTHENTICATION IS OFF" in r.output
    [(app, kw)] = served
    assert (app.state.auth, kw["host"]) == (False, "127.0.0.1")
    r = runner.invoke(cli, [*home, "serve", "--host", "0.0.0.0"])
    assert r.exit_code == 0 and "no active API token yet" in r.output
    assert served[-1][0].state.auth is True
