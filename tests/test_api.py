"""The HTTP API on a real workspace (SQLite and PostgreSQL) through FastAPI's test client."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from edgeops.api import create_app
from edgeops.auth import Role, TokenStore


@pytest.fixture
def client(ws, tmp_path):
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from edgeops.model_io import save_sklearn

    frame = load_iris(as_frame=True).frame
    frame.to_csv(tmp_path / "iris.csv", index=False)
    dv = ws.data.add(tmp_path / "iris.csv", "iris").version
    model = LogisticRegression(max_iter=500).fit(frame.iloc[:, :4], frame.target)
    ws.registry.register(
        "iris", save_sklearn(model), "skops", dataset_version_id=dv.id, metrics={"accuracy": 0.97}
    )
    ws.registry.register("iris", save_sklearn(model), "skops")
    ws.registry.set_alias("iris@1", "production")
    token, _ = TokenStore(ws.db).create("api-tests", Role.VIEWER)
    with TestClient(create_app(ws), headers={"Authorization": f"Bearer {token}"}) as c:
        yield c


def test_registry_endpoints(client):
    assert client.get("/api/health").json()["ok"] is True
    models = client.get("/api/models").json()
    assert [(m["name"], m["latest"], m["aliases"]) for m in models] == [
        ("iris", 2, {"production": 1})
    ]
    v = client.get("/api/models/iris/production").json()
    assert (v["version"], v["aliases"], v["dataset"], v["metrics"]) == (
        1,
        ["production"],
        "iris@1",
        {"accuracy": 0.97},
    )
    assert [x["version"] for x in client.get("/api/models/iris/versions").json()] == [1, 2]
    assert client.get("/api/models/iris/1/lineage").json()["dataset"]["rows"] == 150
    ds = client.get("/api/datasets/iris/1").json()
    assert ds["profile"]["columns"]["target"]["mean"] == 1.0


def test_errors_are_json_with_4xx(client):
    r = client.get("/api/models/iris/9")
    assert r.status_code == 404
    assert r.json() == {"error": "model iris has no version 9", "kind": "NotFound"}
    r = client.get("/api/models/nope/1")
    assert r.status_code == 404
    r = client.get("/api/models/iris/@@")
    assert r.status_code == 422
    assert client.get("/api/runs?limit=0").status_code == 422


def test_openapi_describes_every_route(client):
    spec = client.get("/openapi.json").json()
    for path in (
        "/api/models",
        "/api/models/{name}/{ref}",
        "/api/fleet/devices",
        "/api/rollouts/{rollout_id}",
        "/api/runs/{run_id}",
    ):
        assert path in spec["paths"]
