"""The dashboard in a real browser: headless Chromium (Playwright) against ``create_app``
served by uvicorn over the demo fleet of ``edgeops.dashboard.sample_data`` (SQLite).

Each browser signs in with a viewer token first. Every test also checks that the page
logged no console error, raised no exception and asked no host but this server for
anything. Without Chromium or Playwright the tests are
skipped locally and FAIL in CI (``CI`` set).
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import numpy as np
import pytest

from edgeops.dashboard.sample_data import (
    DEVICES,
    DRIFTED,
    FEATURES,
    VARIANT,
    build_sample_fleet,
    serving,
    telemetry_message,
)

CHROMIUM = os.environ.get("EDGEOPS_CHROMIUM", "/usr/bin/chromium")
LOCAL = ("127.0.0.1", "localhost")
# a model whose feature and class names are markup: the page must show them as text
XSS = '<img src=x id="injected" onerror="window.__pwned = 1">'


def _need(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required in CI (apt-get install chromium; pip install playwright)")
    pytest.skip(f"{what} is not installed")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The demo fleet served on a free port, and a launched browser."""
    try:
        from playwright.sync_api import sync_playwright
    except ModuleNotFoundError:
        _need("playwright")
    if not Path(CHROMIUM).exists():
        _need(f"Chromium ({CHROMIUM})")
    from edgeops import Workspace
    from edgeops.api import create_app
    from edgeops.auth import Role, TokenStore

    home = tmp_path_factory.mktemp("dashboard")
    with pytest.MonkeyPatch.context() as mp:
        for var in ("EDGEOPS_HOME", "EDGEOPS_DB_URL", "EDGEOPS_ARTIFACTS", "EDGEOPS_FLEET"):
            mp.delenv(var, raising=False)
        ws, _ = Workspace.init(home / "ws", db_url=f"sqlite:///{home / 'edgeops.db'}")
    built = build_sample_fleet(ws, now=time.time())
    _add_markup_model(ws)
    token, _ = TokenStore(ws.db).create("dashboard-tests", Role.VIEWER)
    with serving(create_app(ws)) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield {"url": url, "browser": browser, "built": built, "ws": ws, "token": token}
        browser.close()
    ws.close()


def _add_markup_model(ws) -> None:
    """Model ``xss`` with a feature and a class named XSS and one window of telemetry."""
    from edgeops.monitoring.ingest import Ingestor
    from edgeops.registry import NewVariant
    from edgeops_protocol.baseline import baseline_profile
    from edgeops_protocol.stats import WindowStats

    rng = np.random.default_rng(3)
    x = rng.normal(size=(500, 2))
    out = np.stack([1 / (1 + np.exp(-x[:, 0])), 1 - 1 / (1 + np.exp(-x[:, 0]))], axis=1)
    base = baseline_profile(x, out, [XSS, "plain"], [XSS, "ok"])
    blob = b"\0\0\0\0TFL3xss" * 20
    mv = ws.registry.register(
        "xss",
        blob,
        "tflite",
        variants=[NewVariant(VARIANT, blob + b"8", "tflite", {}, {"baseline": base})],
    )
    w = WindowStats(base)
    for row, o in zip(x[:100], out[:100], strict=True):
        w.update(row, o, 1.0)
    v = next(v for v in mv.variants if v.name == VARIANT)
    model = {"name": "xss", "version": 1, "variant": VARIANT, "sha256": v.sha256}
    t = time.time()
    fleet = ws.settings.fleet
    res = Ingestor(ws.db, fleet).ingest(
        [telemetry_message(fleet, "pi-01", 1000, model, w.window(), t - 60, t)]
    )
    assert res.accepted["telemetry"] == 1, res


class Browser:
    """A page that records console errors, page errors and every request's host."""

    def __init__(self, served, login: bool = True) -> None:
        self.url = served["url"]
        self.token = served["token"]
        self.context = served["browser"].new_context(viewport={"width": 1400, "height": 1000})
        self.errors: list[str] = []
        self.foreign: list[str] = []
        self.requested: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        if login:  # the token stays in the tab's sessionStorage for every page opened later
            self.page.goto(f"{self.url}/?refresh=0")
            self.page.fill("#token-input", self.token)
            self.page.click("#login-form button[type=submit]")
            self.page.wait_for_selector("body[data-ready='1']", timeout=30_000)

    def _route(self, route) -> None:
        url = route.request.url
        self.requested.append(url)
        parts = urlsplit(url)
        if parts.scheme in ("http", "https", "ws", "wss") and parts.hostname not in LOCAL:
            self.foreign.append(url)
            route.abort()
        else:
            route.continue_()

    def open(self, **query) -> None:
        self.page.goto(f"{self.url}/?{urlencode({'refresh': 0, **query})}")
        self.page.wait_for_selector("body[data-ready='1']", timeout=30_000)

    def api(self, path: str, **query):
        q = f"?{urlencode(query)}" if query else ""
        auth = {"Authorization": f"Bearer {self.token}"}
        request = urllib.request.Request(f"{self.url}{path}{q}", headers=auth)
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.load(r)

    def attrs(self, selector: str, *names: str) -> list[list[str | None]]:
        return self.page.eval_on_selector_all(
            selector, "(els, names) => els.map(e => names.map(n => e.getAttribute(n)))", list(names)
        )

    def check(self) -> None:
        assert self.errors == []
        assert self.foreign == []
        assert all(urlsplit(u).scheme in ("http", "data") for u in self.requested)


@pytest.fixture
def browser(served):
    b = Browser(served)
    yield b
    b.context.close()


def test_heat_map_has_every_feature_by_bucket_and_the_drift_is_hottest(browser):
    browser.open()
    browser.page.wait_for_selector("[data-chart='heatmap']")
    api = browser.api(
        "/api/models/har/1/drift/timeline", variant=VARIANT, scope="fleet", since="24h", buckets=24
    )["variants"][VARIANT]
    assert api["features"] == list(FEATURES) and len(api["buckets"]) == 24
    [[n_features, n_buckets]] = browser.attrs(
        "[data-chart='heatmap']", "data-features", "data-buckets"
    )
    assert (n_features, n_buckets) == ("6", "24")
    cells = browser.attrs(
        "[data-chart='heatmap'] rect.cell", "data-feature", "data-bucket", "data-psi"
    )
    assert sorted((f, int(b)) for f, b, _ in cells) == sorted(
        (f, b) for f in FEATURES for b in range(24)
    )
    for f, b, psi in cells:
        assert float(psi) == pytest.approx(api["buckets"][int(b)]["psi"][FEATURES.index(f)])
    drifted = [float(p) for f, _, p in cells if f == DRIFTED]
    others = [float(p) for f, _, p in cells if f != DRIFTED]
    assert max(drifted) > 0.25 > 0.05 > max(others)
    assert min(drifted[12:]) > 0.25  # the second half, where the south devices drifted
    labels = browser.page.eval_on_selector_all(
        "[data-chart='heatmap'] [data-feature-label]", "els => els.map(e => e.textContent)"
    )
    assert labels == list(FEATURES)
    assert browser.page.locator("[data-legend='psi']").count() == 1
    flagged = browser.page.get_attribute("[data-flagged]", "data-flagged")
    assert DRIFTED in flagged.split(",")
    browser.check()


def test_choosing_a_feature_redraws_the_distribution(browser):
    browser.open()
    chart = "[data-chart='distribution']"
    browser.page.wait_for_selector(f"{chart}[data-feature='{FEATURES[0]}']")
    assert browser.attrs(chart, "data-bins") == [["12"]]
    browser.page.select_option("#feature-select", "temp_c")
    browser.page.wait_for_selector(f"{chart}[data-feature='temp_c']")
    api = browser.api(
        "/api/models/har/1/distribution", feature="temp_c", variant=VARIANT, since="24h"
    )
    assert browser.attrs(chart, "data-bins") == [[str(len(api["bins"]))]] == [["8"]]
    live = browser.attrs(f"{chart} rect[data-series='live']", "data-bin", "data-count")
    assert [int(c) for _, c in sorted(live, key=lambda x: int(x[0]))] == api["live"]["counts"]
    base = browser.attrs(f"{chart} rect[data-series='baseline']", "data-count")
    assert [int(c) for [c] in base] == api["baseline"]["counts"]
    assert browser.page.input_value("#feature-select") == "temp_c"
    classes = browser.attrs("[data-chart='classes']", "data-bins")
    assert classes == [["3"]]
    assert browser.page.locator("[data-chart='latency'] rect[data-series='live']").count() == 16
    browser.check()


def test_alerts_table_lists_the_stored_alerts(browser, served):
    browser.open()
    rows = browser.attrs("[data-table='alerts'] tbody tr", "data-alert-id", "data-status")
    stored = browser.api("/api/alerts", status="open")
    assert len(stored) == served["built"].alerts_opened == 12  # fleet, tag, device, group
    assert rows == [[str(a["id"]), "open"] for a in stored]
    reasons = browser.page.eval_on_selector_all(
        "[data-table='alerts'] tbody tr td:last-child", "els => els.map(e => e.textContent)"
    )
    assert reasons == [a["reason"] for a in stored]
    assert any(f"psi of {DRIFTED} in fleet/{VARIANT}" in r for r in reasons)
    browser.check()


def test_overview_shows_devices_versions_rollout_and_alert_counts(browser, served):
    browser.open()

    def stat(name):
        return browser.page.get_attribute(f"[data-stat='{name}']", "data-value")

    assert (stat("devices-online"), stat("devices-total")) == ("5", str(len(DEVICES)))
    assert (stat("alerts-open"), stat("rollouts-active")) == ("12", "1")
    assert stat("windows") == str(served["built"].windows + 1)  # and the xss model's one
    assert browser.attrs("[data-deployed]", "data-deployed", "data-devices") == [
        ["har@1", "4"],
        ["har@2", "2"],
    ]
    [[rollout, status]] = browser.attrs("[data-rollout]", "data-rollout", "data-status")
    assert (rollout, status) == (served["built"].rollout, "running")
    assert browser.attrs("[data-rollout] [data-chart='progress']", "data-progress") == [["0.5"]]
    assert browser.page.text_content("#fleet-name") == "default"
    browser.check()


def test_skew_panel_shows_agreement_accuracy_and_outliers(browser):
    browser.open()
    api = browser.api("/api/models/har/1/skew", scope="fleet", since="24h")
    value = browser.page.get_attribute("[data-stat='agreement']", "data-value")
    assert float(value) == api["agreement"]["overall"]["rate"] == 1.0
    acc = browser.page.get_attribute("[data-stat='accuracy-device']", "data-value")
    assert float(acc) == pytest.approx(api["accuracy"]["overall"]["accuracy"])
    outliers = browser.attrs("[data-table='outliers'] tbody tr", "data-outlier")
    assert [d for [d] in outliers] == [o["device"] for o in api["outliers"] if o["outlier"]]
    browser.check()


def test_empty_states_for_a_version_without_telemetry(browser):
    browser.open(model="har", version="2")
    for kind in ("heatmap", "distribution", "classes", "latency"):
        assert browser.page.locator(f"[data-empty='{kind}']").count() == 1, kind
    assert browser.page.locator("[data-chart='heatmap']").count() == 0
    assert browser.page.input_value("#version-select") == "2"
    browser.check()


def test_names_from_the_store_are_text_not_markup(browser):
    browser.open(model="xss", version="1", since="")
    browser.page.wait_for_selector("[data-chart='heatmap']")
    labels = browser.page.eval_on_selector_all(
        "[data-feature-label]", "els => els.map(e => e.textContent)"
    )
    assert labels == [XSS, "plain"]
    options = browser.page.eval_on_selector_all(
        "#feature-select option", "els => els.map(e => e.textContent)"
    )
    assert options == [XSS, "plain"]
    browser.page.wait_for_selector("[data-chart='classes']")
    assert XSS in browser.page.text_content("[data-chart='classes']")
    assert browser.page.locator("#injected").count() == 0
    assert browser.page.evaluate("window.__pwned") is None
    browser.check()


def test_the_page_refreshes_itself(browser):
    browser.page.goto(f"{browser.url}/?refresh=1")
    browser.page.wait_for_selector("body[data-refreshes='3']", timeout=30_000)
    assert browser.page.locator("[data-chart='heatmap']").count() == 1
    browser.check()


def test_the_page_asks_for_a_token_before_it_fetches_any_data(served):
    b = Browser(served, login=False)
    try:
        b.page.goto(f"{b.url}/?refresh=0")
        b.page.wait_for_selector("#login-form", state="visible")
        assert b.page.locator("main").is_hidden()
        paths = {urlsplit(u).path for u in b.requested if u.startswith("http")}
        assert paths == {"/", "/static/dashboard.css", "/static/dashboard.js", "/api/health"}
        b.page.fill("#token-input", "eo_not-a-token")
        b.page.click("#login-form button[type=submit]")
        b.page.wait_for_selector("#login-form", state="visible")
        b.page.wait_for_function("document.getElementById('login-error').textContent !== ''")
        assert b.page.text_content("#login-error").startswith("unknown token")
        assert b.page.evaluate("sessionStorage.getItem('edgeops.token')") is None
        b.page.fill("#token-input", b.token)
        b.page.click("#login-form button[type=submit]")
        b.page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        assert b.page.get_attribute("[data-stat='devices-total']", "data-value") == str(
            len(DEVICES)
        )
        b.page.click("#sign-out")
        b.page.wait_for_selector("#login-form", state="visible")
        assert b.page.evaluate("sessionStorage.getItem('edgeops.token')") is None
        assert b.foreign == []
        assert [e for e in b.errors if "401" not in e] == []  # the refused token's request
    finally:
        b.context.close()
