// The edgeops dashboard: fetches the JSON API of this server and draws every chart as
// inline SVG. No library, nothing from another host. Every text that comes from the
// server (device ids, labels, feature names, reasons) enters the page as a text node or
// an attribute value, never as markup.
//
// Query string: ?refresh=SECONDS (0: off; default 30), ?model=NAME, ?version=REF,
// ?variant=NAME, ?scope=fleet|tag:T|device:ID, ?since=1h|6h|24h|7d|"" (everything),
// ?feature=NAME, ?buckets=N.
//
// The API needs a token (docs/security.md): the sign-in form keeps it in sessionStorage
// (this tab only, gone when it closes) and every request sends it as
// "Authorization: Bearer <token>". Nothing but the public api/health is fetched before.
"use strict";

(function () {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const params = new URLSearchParams(window.location.search);
  const TOKEN_KEY = "edgeops.token";
  let timer = null;
  let needsToken = true;
  const refreshSeconds = numberParam("refresh", 30, 0, 86400);
  const state = {
    model: params.get("model"),
    version: params.get("version"),
    variant: params.get("variant"),
    scope: params.get("scope") || "fleet",
    since: params.has("since") ? params.get("since") : "24h",
    feature: params.get("feature"),
    buckets: numberParam("buckets", 24, 1, 200),
    alertStatus: "open",
    versions: [],
    busy: false,
    again: false, // a refresh was asked for while one was running
  };
  // PSI colour scale: stops of (psi, [r, g, b]); values past the last stop take its colour
  const PSI_STOPS = [
    [0.0, [237, 246, 233]],
    [0.1, [254, 224, 139]],
    [0.25, [244, 109, 67]],
    [0.5, [165, 0, 38]],
  ];

  function numberParam(name, fallback, lo, hi) {
    const v = Number(params.get(name));
    return params.has(name) && Number.isFinite(v) ? Math.min(hi, Math.max(lo, v)) : fallback;
  }

  // --- DOM helpers: text is always a text node --------------------------------------------
  function node(ns, tag, attrs, children) {
    const e = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined) e.setAttribute(k, String(v));
    }
    for (const c of children || []) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }
  const h = (tag, attrs, ...children) => node(null, tag, attrs, children);
  const s = (tag, attrs, ...children) => node(SVG_NS, tag, attrs, children);
  const $ = (id) => document.getElementById(id);

  function replace(host, ...children) {
    host.replaceChildren(...children.filter((c) => c));
  }
  function empty(kind, text) {
    return h("p", { class: "empty", "data-empty": kind }, text);
  }
  function fmt(x, digits) {
    if (x === null || x === undefined || !Number.isFinite(x)) return "–";
    return Number(x).toFixed(digits === undefined ? 3 : digits);
  }
  function pct(x) {
    return x === null || x === undefined ? "–" : (100 * x).toFixed(1) + " %";
  }
  function clock(t) {
    const d = new Date(t * 1000);
    return d.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit",
      minute: "2-digit" });
  }
  function shortTime(t) {
    const d = new Date(t * 1000);
    return d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
  }

  async function api(path, options) {
    const headers = { Accept: "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (needsToken && token) headers.Authorization = `Bearer ${token}`;
    const r = await fetch(path, Object.assign({}, options || {}, { headers }));
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    const message = (body && body.error) || `${r.status} ${r.statusText}`;
    if (r.status === 401 && needsToken) signOut(message);
    if (!r.ok) throw new Error(message);
    return body;
  }

  // --- sign-in --------------------------------------------------------------------------
  function showLogin(message) {
    if (timer !== null) window.clearInterval(timer);
    timer = null;
    document.querySelector("main").hidden = true;
    $("picker").hidden = true;
    $("sign-out").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    $("token-input").focus();
  }
  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin(message);
  }
  function start() {
    $("login").hidden = true;
    document.querySelector("main").hidden = false;
    $("picker").hidden = false;
    $("sign-out").hidden = !needsToken;
    refresh();
    if (refreshSeconds > 0 && timer === null) {
      timer = window.setInterval(refresh, refreshSeconds * 1000);
    }
  }
  function query(obj) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(obj)) {
      if (v !== null && v !== undefined && v !== "") q.set(k, v);
    }
    const text = q.toString();
    return text ? "?" + text : "";
  }
  function versionPath() {
    return `api/models/${encodeURIComponent(state.model)}/${encodeURIComponent(state.version)}`;
  }

  // --- colour ---------------------------------------------------------------------------
  function psiColour(psi) {
    if (psi === null || psi === undefined || !Number.isFinite(psi)) return "#d9d9d9";
    const x = Math.max(0, psi);
    for (let i = 1; i < PSI_STOPS.length; i++) {
      const [p0, c0] = PSI_STOPS[i - 1];
      const [p1, c1] = PSI_STOPS[i];
      if (x <= p1) {
        const f = (x - p0) / (p1 - p0);
        const c = c0.map((v, j) => Math.round(v + f * (c1[j] - v)));
        return `rgb(${c[0]},${c[1]},${c[2]})`;
      }
    }
    const c = PSI_STOPS[PSI_STOPS.length - 1][1];
    return `rgb(${c[0]},${c[1]},${c[2]})`;
  }

  // --- charts ---------------------------------------------------------------------------
  function heatmap(variant, data) {
    const features = data.features;
    const buckets = data.buckets;
    const cellW = Math.max(8, Math.min(40, Math.floor(900 / Math.max(1, buckets.length))));
    const cellH = 22;
    const left = 120;
    const top = 8;
    const width = left + cellW * buckets.length + 10;
    const height = top + cellH * features.length + 70;
    const svg = s("svg", {
      "data-chart": "heatmap",
      "data-variant": variant,
      "data-features": features.length,
      "data-buckets": buckets.length,
      viewBox: `0 0 ${width} ${height}`,
      width,
      height,
      role: "img",
      "aria-label": "PSI per feature and time bucket",
    });
    features.forEach((name, i) => {
      const y = top + i * cellH;
      svg.append(s("text", { x: left - 6, y: y + cellH / 2 + 4, class: "axis",
        "text-anchor": "end", "data-feature-label": name }, name));
      buckets.forEach((b, j) => {
        const psi = b.psi[i];
        svg.append(s("rect", {
          x: left + j * cellW,
          y,
          width: cellW - 1,
          height: cellH - 1,
          fill: psiColour(psi),
          class: "cell",
          "data-feature": name,
          "data-bucket": j,
          "data-t": b.t,
          "data-count": b.count,
          "data-psi": psi === null || psi === undefined ? "" : psi,
        }, s("title", {}, `${name} · ${clock(b.t)} · PSI ${fmt(psi)} · ${b.count} predictions`)));
      });
    });
    const axisY = top + cellH * features.length + 14;
    const every = Math.max(1, Math.ceil(buckets.length / 8));
    buckets.forEach((b, j) => {
      if (j % every === 0 || j === buckets.length - 1) {
        svg.append(s("text", { x: left + j * cellW + cellW / 2, y: axisY, class: "axis",
          "text-anchor": "middle" }, shortTime(b.t)));
      }
    });
    svg.append(legend(left, axisY + 16));
    return svg;
  }

  function legend(x, y) {
    const g = s("g", { "data-legend": "psi", transform: `translate(${x},${y})` });
    g.append(s("text", { x: 0, y: 12, class: "axis" }, "PSI"));
    const steps = 40;
    const w = 4;
    const max = 0.6;
    for (let i = 0; i < steps; i++) {
      g.append(s("rect", { x: 32 + i * w, y: 2, width: w, height: 12,
        fill: psiColour((i / (steps - 1)) * max) }));
    }
    for (const v of [0, 0.1, 0.25, 0.5]) {
      const px = 32 + (v / max) * steps * w;
      g.append(s("line", { x1: px, x2: px, y1: 14, y2: 18, class: "tick" }));
      g.append(s("text", { x: px, y: 30, class: "axis", "text-anchor": "middle" },
        v === 0.5 ? "≥0.5" : String(v)));
    }
    g.append(s("rect", { x: 32 + steps * w + 24, y: 2, width: 12, height: 12,
      fill: psiColour(null) }));
    g.append(s("text", { x: 32 + steps * w + 40, y: 12, class: "axis" }, "no data"));
    return g;
  }

  // grouped bars: series = [{name, cls, probabilities, counts}], one group per label
  function bars(kind, labels, series, attrs) {
    // rotated bin labels need room below the plot and, for the first ones, to the left
    const longest = Math.max(1, ...labels.map((l) => String(l).length));
    const labelPx = Math.min(140, longest * 6);
    const left = Math.max(44, Math.round(labelPx * 0.77) - 10);
    const bottom = Math.round(labelPx * 0.64) + 24;
    const plotH = 170;
    const groupW = Math.max(14, Math.min(60, Math.floor(360 / Math.max(1, labels.length))));
    const width = left + groupW * labels.length + 12;
    const height = 16 + plotH + bottom;
    const maxP = Math.max(0.01, ...series.flatMap((x) => x.probabilities));
    const svg = s("svg", Object.assign({
      "data-chart": kind,
      "data-bins": labels.length,
      viewBox: `0 0 ${width} ${height}`,
      width,
      height,
      role: "img",
    }, attrs || {}));
    const y0 = 16 + plotH;
    for (const f of [0, 0.5, 1]) {
      const y = y0 - f * plotH;
      svg.append(s("line", { x1: left, x2: width - 6, y1: y, y2: y, class: "grid" }));
      svg.append(s("text", { x: left - 4, y: y + 4, class: "axis", "text-anchor": "end" },
        (100 * f * maxP).toFixed(0) + "%"));
    }
    const barW = Math.max(3, (groupW - 4) / series.length);
    labels.forEach((label, i) => {
      series.forEach((ser, k) => {
        const p = ser.probabilities[i] || 0;
        const hgt = (p / maxP) * plotH;
        svg.append(s("rect", {
          x: left + i * groupW + 2 + k * barW,
          y: y0 - hgt,
          width: barW - 1,
          height: Math.max(0, hgt),
          class: `bar ${ser.cls}`,
          "data-series": ser.name,
          "data-bin": i,
          "data-count": ser.counts[i],
          "data-p": p,
        }, s("title", {}, `${label} · ${ser.name}: ${ser.counts[i]} (${pct(p)})`)));
      });
      const lx = left + i * groupW + groupW / 2;
      svg.append(s("text", { x: lx, y: y0 + 12, class: "axis tick-label",
        "text-anchor": "end", transform: `rotate(-40 ${lx} ${y0 + 12})` }, label));
    });
    const key = s("g", { transform: `translate(${left},4)` });
    series.forEach((ser, k) => {
      key.append(s("rect", { x: k * 90, y: 0, width: 10, height: 10, class: `bar ${ser.cls}` }));
      key.append(s("text", { x: k * 90 + 14, y: 9, class: "axis" }, ser.name));
    });
    svg.append(key);
    return svg;
  }

  function distributionChart(kind, d) {
    const series = [];
    if (d.baseline) {
      series.push({ name: "baseline", cls: "baseline", probabilities: d.baseline.probabilities,
        counts: d.baseline.counts });
    }
    series.push({ name: "live", cls: "live", probabilities: d.live.probabilities,
      counts: d.live.counts });
    return bars(kind, d.bins, series, { "data-feature": d.feature, "data-total": d.live.total });
  }

  function progressBar(fraction) {
    const w = 220;
    return s("svg", { "data-chart": "progress", "data-progress": fraction, width: w, height: 12,
      viewBox: `0 0 ${w} 12`, role: "img" },
    s("rect", { x: 0, y: 0, width: w, height: 12, rx: 3, class: "track" }),
    s("rect", { x: 0, y: 0, width: Math.round(w * fraction), height: 12, rx: 3, class: "fill" }));
  }

  // --- panels ---------------------------------------------------------------------------
  function renderOverview(o) {
    $("fleet-name").textContent = o.fleet;
    const stat = (name, value) => {
      const e = document.querySelector(`[data-stat="${name}"]`);
      e.textContent = String(value);
      e.setAttribute("data-value", String(value));
    };
    stat("devices-online", o.devices.online);
    stat("devices-total", o.devices.total);
    stat("alerts-open", o.alerts.open);
    stat("windows", o.telemetry.windows);
    stat("rollouts-active", o.rollouts.length);
    replace($("deployed"), ...(o.deployed.length
      ? o.deployed.map((d) => h("li", { "data-deployed": d.ref, "data-devices": d.devices },
        h("strong", {}, d.ref), ` — ${d.devices} device${d.devices === 1 ? "" : "s"}`,
        ` (${d.online} online)`))
      : [empty("deployed", "No device reports a model yet.")]));
    replace($("rollouts"), ...(o.rollouts.length
      ? o.rollouts.map((r) => h("div", { class: "rollout", "data-rollout": r.id,
        "data-status": r.status },
      h("div", {}, h("strong", {}, r.model), ` to ${r.selector} · ${r.status} · stage `,
        `${r.stage + 1}/${r.stages} · ${r.activated}/${r.devices} activated`),
      progressBar(r.progress)))
      : [empty("rollouts", "No rollout in progress.")]));
  }

  function fillSelect(select, options, current) {
    const values = options.map((o) => o.value);
    const keep = values.includes(current) ? current : values[0];
    select.replaceChildren(...options.map((o) => h("option", { value: o.value }, o.label)));
    if (keep !== undefined) select.value = keep;
    return keep;
  }

  async function loadPicker(overview) {
    const models = overview.models;
    if (!models.length) {
      fillSelect($("model-select"), [], null);
      state.model = null;
      return;
    }
    state.model = fillSelect($("model-select"),
      models.map((m) => ({ value: m.name, label: m.name })), state.model);
    const model = models.find((m) => m.name === state.model);
    state.versions = await api(`api/models/${encodeURIComponent(state.model)}/versions`);
    const preferred = state.version || (model.aliases.production !== undefined
      ? String(model.aliases.production) : String(model.latest));
    state.version = fillSelect($("version-select"), state.versions.map((v) => ({
      value: String(v.version),
      label: v.aliases.length ? `${v.version} (${v.aliases.join(", ")})` : String(v.version),
    })), preferred);
    const card = state.versions.find((v) => String(v.version) === state.version);
    const variants = card.variants.filter((v) => v.name !== "original" && v.meta
      && v.meta.baseline);
    state.variant = fillSelect($("variant-select"),
      variants.map((v) => ({ value: v.name, label: v.name })), state.variant) || null;
    $("variant-label").hidden = variants.length < 2;
    const devices = await api("api/fleet/devices");
    const tags = [...new Set(devices.flatMap((d) => d.tags))].sort();
    state.scope = fillSelect($("scope-select"), [
      { value: "fleet", label: "whole fleet" },
      ...tags.map((t) => ({ value: `tag:${t}`, label: `tag ${t}` })),
      ...devices.map((d) => ({ value: `device:${d.device}`, label: `device ${d.device}` })),
    ], state.scope);
    $("range-select").value = state.since;
  }

  function renderDriftSummary(report) {
    const v = report.variants[state.variant];
    if (!v) {
      replace($("drift-summary"), "No telemetry in this scope and range.");
      return;
    }
    const r = v.report;
    const flagged = v.rule.flagged;
    replace($("drift-summary"),
      `${r.count} predictions from ${v.devices.length} devices in ${v.windows} windows · `,
      "drift rule: ",
      h("strong", { "data-flagged": flagged.join(",") },
        flagged.length ? `drift in ${flagged.join(", ")}` : "no drift"),
      ` · error rate ${pct(r.error_rate)}`);
  }

  function renderHeatmap(timeline) {
    const v = timeline.variants[state.variant];
    if (!v || !v.buckets.length) {
      replace($("heatmap"), empty("heatmap", "No telemetry windows in this scope and range."));
      return;
    }
    replace($("heatmap"), heatmap(state.variant, v));
  }

  function renderDistribution(host, kind, d, what) {
    if (!d.live || !d.live.total) {
      replace(host, empty(kind, `No live ${what} in this scope and range.`));
      return;
    }
    const note = d.non_finite
      ? h("p", { class: "summary" }, `${d.non_finite} non-finite values not shown`) : null;
    replace(host, distributionChart(kind, d), note);
  }

  function renderFeatureSelect(d) {
    const options = d.features.map((f) => ({ value: f, label: f }));
    state.feature = fillSelect($("feature-select"), options, state.feature || d.feature);
  }

  function stat(name, label, value, detail) {
    return h("div", { class: "kv", "data-stat": name, "data-value": value === null ? "" : value },
      h("span", { class: "k" }, label), h("span", { class: "v" }, value === null ? "–"
        : pct(value)), detail ? h("span", { class: "d" }, detail) : null);
  }

  function renderSkew(k) {
    const parts = [];
    const a = k.agreement && k.agreement.overall;
    if (a) {
      parts.push(stat("agreement", "agreement with the server's float model", a.rate,
        `${a.agreeing}/${a.n} samples · 95 % CI ${pct(a.ci95[0])}–${pct(a.ci95[1])}`));
    } else {
      parts.push(h("p", { class: "empty", "data-empty": "agreement" },
        (k.reasons && k.reasons.agreement) || "No agreement data."));
    }
    const acc = k.accuracy && k.accuracy.overall;
    if (acc) {
      parts.push(stat("accuracy-device", "on-device accuracy (labelled samples)", acc.accuracy,
        `${acc.correct}/${acc.labelled} · 95 % CI ${pct(acc.ci[0])}–${pct(acc.ci[1])}`));
      parts.push(stat("accuracy-offline", "offline test accuracy", acc.offline_accuracy,
        acc.outside ? `outside the interval: devices ${acc.direction}` : "inside the interval"));
    } else {
      parts.push(h("p", { class: "empty", "data-empty": "accuracy" },
        (k.reasons && k.reasons.accuracy) || "No labelled samples."));
    }
    const outliers = (k.outliers || []).filter((o) => o.outlier);
    if (outliers.length) {
      parts.push(h("h3", {}, "Devices unlike their group"));
      parts.push(h("table", { "data-table": "outliers" },
        h("thead", {}, h("tr", {}, h("th", {}, "device"), h("th", {}, "variant"),
          h("th", {}, "differs in"), h("th", {}, "p (adj.)"))),
        h("tbody", {}, ...outliers.map((o) => h("tr", { "data-outlier": o.device },
          h("td", {}, o.device), h("td", {}, o.variant), h("td", {}, o.flagged.join(", ")),
          h("td", {}, o.p === 0 ? "< 1e-300" : Number(o.p).toExponential(1)))))));
    } else {
      parts.push(h("p", { class: "empty", "data-empty": "outliers" },
        (k.reasons && k.reasons.outliers) || "No device differs from its group."));
    }
    replace($("skew"), ...parts);
  }

  function renderAlerts(rows) {
    if (!rows.length) {
      replace($("alerts"), empty("alerts",
        state.alertStatus === "open" ? "No open alerts." : "No alerts."));
      return;
    }
    const head = ["status", "model", "scope", "subject", "metric", "value", "threshold",
      "opened", "reason"];
    replace($("alerts"), h("table", { "data-table": "alerts" },
      h("thead", {}, h("tr", {}, ...head.map((x) => h("th", {}, x)))),
      h("tbody", {}, ...rows.map((a) => h("tr", {
        "data-alert-id": a.id, "data-status": a.status, class: a.status,
      },
      h("td", {}, a.status), h("td", {}, a.model), h("td", {}, a.scope),
      h("td", {}, a.subject), h("td", {}, a.metric),
      h("td", { class: "num" }, a.value === null ? "–" : Number(a.value).toPrecision(3)),
      h("td", { class: "num" }, a.threshold === null ? "–" : String(a.threshold)),
      h("td", { class: "when" }, clock(Date.parse(a.opened_at) / 1000)),
      h("td", {}, a.reason))))));
  }

  // --- refresh --------------------------------------------------------------------------
  async function refreshDistribution() {
    const base = versionPath() + "/distribution";
    const q = { variant: state.variant, scope: state.scope, since: state.since };
    const d = await api(base + query(Object.assign({ feature: state.feature }, q)));
    renderFeatureSelect(d);
    renderDistribution($("distribution"), "distribution", d, `values of ${d.feature}`);
    return q;
  }

  async function refreshModel() {
    if (!state.model || !state.variant) {
      const text = state.model ? "This version has no variant with a baseline profile."
        : "No model registered yet.";
      for (const id of ["heatmap", "distribution", "classes", "latency"]) {
        replace($(id), empty(id, text));
      }
      replace($("drift-summary"));
      replace($("skew"), empty("skew", text));
      return;
    }
    const q = { variant: state.variant, scope: state.scope, since: state.since };
    const [report, timeline, classes, latency, skew] = await Promise.all([
      api(versionPath() + "/drift" + query(q)),
      api(versionPath() + "/drift/timeline" + query(Object.assign({ buckets: state.buckets }, q))),
      api(versionPath() + "/distribution" + query(Object.assign({ feature: "outputs" }, q))),
      api(versionPath() + "/distribution" + query(Object.assign({ feature: "latency" }, q))),
      api(versionPath() + "/skew" + query({ scope: state.scope, since: state.since })),
      refreshDistribution(),
    ]);
    renderDriftSummary(report);
    renderHeatmap(timeline);
    renderDistribution($("classes"), "classes", classes, "predictions");
    renderDistribution($("latency"), "latency", latency, "latencies (ms)");
    renderSkew(skew);
  }

  async function refresh(reloadPicker) {
    if (state.busy) {
      state.again = true;
      return;
    }
    state.busy = true;
    const status = $("status");
    try {
      const overview = await api("api/overview");
      renderOverview(overview);
      if (reloadPicker !== false) await loadPicker(overview);
      await Promise.all([
        refreshModel(),
        api("api/alerts" + query({ status: state.alertStatus })).then(renderAlerts),
      ]);
      const n = Number(document.body.dataset.refreshes) + 1;
      document.body.dataset.refreshes = String(n);
      document.body.dataset.ready = "1";
      status.className = "status ok";
      status.textContent = `updated ${new Date().toLocaleTimeString()}` +
        (refreshSeconds ? ` · every ${refreshSeconds} s` : "");
    } catch (err) {
      status.className = "status error";
      status.textContent = `could not update: ${err.message}`;
    } finally {
      state.busy = false;
      if (state.again) {
        state.again = false;
        refresh();
      }
    }
  }

  function on(id, handler) {
    $(id).addEventListener("change", (ev) => {
      handler(ev.target.value);
      refresh();
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    on("model-select", (v) => { state.model = v; state.version = null; state.variant = null;
      state.feature = null; });
    on("version-select", (v) => { state.version = v; state.variant = null; });
    on("variant-select", (v) => { state.variant = v; state.feature = null; });
    on("scope-select", (v) => { state.scope = v; });
    on("range-select", (v) => { state.since = v; });
    on("alert-status", (v) => { state.alertStatus = v; });
    $("feature-select").addEventListener("change", async (ev) => {
      state.feature = ev.target.value;
      $("distribution").setAttribute("aria-busy", "true");
      try {
        await refreshDistribution();
      } catch (err) {
        replace($("distribution"), empty("distribution", `could not load: ${err.message}`));
      } finally {
        $("distribution").removeAttribute("aria-busy");
      }
    });
    $("login-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const token = $("token-input").value.trim();
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      $("token-input").value = "";
      start();
    });
    $("sign-out").addEventListener("click", () => signOut(""));
    fetch("api/health", { headers: { Accept: "application/json" } })
      .then((r) => r.json())
      .then((h) => { needsToken = h.auth !== false; })
      .catch(() => { needsToken = true; })
      .then(() => {
        if (!needsToken || sessionStorage.getItem(TOKEN_KEY)) start();
        else showLogin("");
      });
  });
})();
