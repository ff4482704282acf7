// shadowd's dashboard. Everything that came from a target (bodies, headers, field names,
// endpoint names, values) is put in the page with textContent or as a text node, never as
// HTML: el() below is the only way this file builds elements, and it has no HTML path.
"use strict";

// -- the token: /#token=... stays in this tab, out of history and out of every URL sent ----
(function takeToken() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get("token");
  if (token) {
    sessionStorage.setItem("shadowd-token", token);
    history.replaceState(null, "", location.pathname + location.search);
  }
})();
const token = sessionStorage.getItem("shadowd-token");
const authHeaders = token ? { Authorization: "Bearer " + token } : {};

// -- building the page ----------------------------------------------------------------------
function el(tag, props, ...children) {
  const node = document.createElement(tag);
  if (props) {
    for (const [key, value] of Object.entries(props)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key === "title") node.title = value;
      else if (key === "href") node.setAttribute("href", value);  // only our own #/ routes
      else if (key === "onclick") node.addEventListener("click", value);
      else if (key === "open") node.open = true;
      else if (key.startsWith("data-")) node.setAttribute(key, value);
      else throw new Error("el(): unknown property " + key);
    }
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}
const $ = (id) => document.getElementById(id);
const pct = (x) => (x === null || x === undefined ? "-" : (100 * x).toFixed(x > 0 && x < 0.001 ? 3 : 1) + "%");
const ms = (seconds) => (seconds === null || seconds === undefined ? "-" : (seconds * 1000).toFixed(seconds < 0.01 ? 2 : 1));
const when = (t) => new Date(t * 1000).toLocaleTimeString();
const sum = (values) => values.reduce((a, b) => a + b, 0);

// -- the API ----------------------------------------------------------------------------------
async function api(path, options = {}) {
  const answer = await fetch(path, { ...options, headers: { ...authHeaders, ...(options.headers || {}) } });
  let body = null;
  try { body = await answer.json(); } catch (_) { /* not JSON: reported below */ }
  if (!answer.ok && answer.status !== 412) {
    const why = body && body.error ? ": " + body.error : "";
    throw new Error(path + " answered " + answer.status + why);
  }
  return body;
}
function showError(err) {
  $("error").textContent = err ? "Cannot read the admin API: " + err.message +
    (token ? "" : " (if it needs a token, open /#token=YOUR_TOKEN)") : "";
}

// -- where we are: #/ · #/e/ID · #/e/ID/f/PATH · #/e/ID/s/EXCHANGE (deep links) ------------
function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const at = { endpoint: null, field: null, sample: null };
  if (parts[0] === "e" && parts[1]) {
    at.endpoint = parts[1];
    if (parts[2] === "f" && parts.length > 3) at.field = parts.slice(3).join("/");
    if (parts[2] === "s" && parts[3]) at.sample = parts[3];
  }
  return at;
}
const link = (...parts) => "#/" + parts.map(encodeURIComponent).join("/");

// -- state ----------------------------------------------------------------------------------
const state = { report: null, verdict: null, samples: null, samplesFor: null, charts: {} };

// -- header and decision ------------------------------------------------------------------
function renderVerdict(v) {
  state.verdict = v;
  const badge = $("verdict");
  badge.textContent = v.verdict.toUpperCase();
  badge.className = "badge " + v.verdict;
  badge.title = "judged at " + when(v.judged_at);
  $("reasons").replaceChildren(...(v.reasons.length ? v.reasons : ["no reasons given"]).map((r) => el("li", { text: r })));
  const owner = [["owner", v.owner], ["expected result", v.expected_result], ["rollback", v.rollback]];
  $("owner").replaceChildren(...owner.flatMap(([k, value]) => [el("dt", { text: k }), el("dd", { text: value || "not set in [verdict]" , class: value ? "" : "muted" })]));
  renderCriteria(v.criteria);
}

// How each criterion's measure reads (shadowd.verdict.judge): shares, increases relative to
// the baseline (latency x13.5 is +1250 %), or counts.
const SHARES = new Set(["divergence", "errors", "cache_hit_ratio"]);
const INCREASES = new Set(["latency_p50", "latency_p99", "db_calls"]);
function measure(c, x) {
  if (x === null || x === undefined) return "-";
  if (SHARES.has(c.name)) return pct(x);
  if (INCREASES.has(c.name)) return (x >= 0 ? "+" : "") + (100 * x).toFixed(Math.abs(x) >= 1 ? 0 : 1) + "%";
  return Math.abs(x) >= 100 ? x.toFixed(0) : Number(x.toPrecision(3)).toString();
}
function criterionRow(c) {
  // measured against threshold as a bar: the threshold sits at 50 % of the track
  let fill = 0;
  if (c.measured !== null && c.threshold) fill = Math.min(1, Math.abs(c.measured) / Math.abs(c.threshold) / 2);
  const bar = el("span", { class: "track", title: "measured " + measure(c, c.measured) + ", threshold " + measure(c, c.threshold) },
    el("span", { class: "fill " + c.status, "data-fill": String(Math.round(fill * 100)) }), el("span", { class: "limit" }));
  return el("div", { class: "criterion " + c.status, title: c.reason },
    el("span", { class: "cname", text: c.name }), el("span", { class: "cscope", text: c.scope }), bar,
    el("span", { class: "cvalue", text: measure(c, c.measured) + " / " + measure(c, c.threshold) }));
}
function renderCriteria(criteria) {
  const order = { fail: 0, inconclusive: 1, pass: 2 };
  const sorted = [...criteria].sort((a, b) => order[a.status] - order[b.status]);
  const open = sorted.filter((c) => c.status !== "pass");
  const passing = sorted.filter((c) => c.status === "pass");
  const count = { fail: 0, inconclusive: 0, pass: 0 };
  for (const c of criteria) count[c.status] += 1;
  $("criteria-count").textContent = `${count.fail} failing · ${count.inconclusive} inconclusive · ${count.pass} passing`;
  const box = $("criteria");
  box.replaceChildren(...open.slice(0, 60).map(criterionRow));
  if (open.length > 60) box.append(el("p", { class: "muted", text: `… and ${open.length - 60} more not passing` }));
  if (passing.length) {
    const details = el("details", null, el("summary", { text: `${passing.length} passing` }), ...passing.slice(0, 200).map(criterionRow));
    box.append(details);
  }
  for (const fill of box.querySelectorAll(".fill")) fill.style.width = fill.dataset.fill + "%";
}

function renderMirroring(m) {
  const on = !!m.enabled;
  $("mirroring").textContent = on ? "mirroring on" : "mirroring OFF";
  $("mirroring").className = on ? "state on" : "state off";
  const kill = $("kill");
  kill.hidden = false;
  kill.textContent = on ? "Stop mirroring" : "Start mirroring";
  kill.dataset.enable = on ? "false" : "true";
  const dropped = m.dropped || {}, skipped = m.skipped || {};
  const counts = (o) => Object.entries(o).filter(([, n]) => n).map(([k, n]) => `${k} ${n}`).join(", ") || "none";
  $("flow").replaceChildren(el("dl", null,
    el("dt", { text: "queue / in flight" }), el("dd", { text: `${m.queue_depth ?? "-"} / ${m.in_flight ?? "-"}` }),
    el("dt", { text: "diff backlog" }), el("dd", { text: String(m.diff_backlog ?? "-") }),
    el("dt", { text: "dropped (shed)" }), el("dd", { class: sum(Object.values(dropped)) ? "warn" : "", text: counts(dropped) }),
    el("dt", { text: "skipped" }), el("dd", { text: counts(skipped) })));
}

async function toggleMirroring() {
  const enable = $("kill").dataset.enable === "true";
  if (!enable && !confirmStop()) return;
  try {
    const status = await api("/api/v1/mirror", { method: "POST", body: JSON.stringify({ enabled: enable }),
      headers: { "Content-Type": "application/json" } });
    renderMirroring(status);
    showError(null);
  } catch (err) {
    $("error").textContent = "The kill switch was refused: " + err.message +
      (token ? "" : " (if the API needs a token, open /#token=YOUR_TOKEN)");
  }
}
// A test (and an operator in a hurry) may skip the question with ?confirm=0.
const confirmStop = () => new URLSearchParams(location.search).get("confirm") === "0" || window.confirm("Stop mirroring to the candidate?");

function renderRules(rules) {
  $("rules").replaceChildren(rules.length ? el("table", { class: "rules" },
    el("thead", null, el("tr", null, el("th", { text: "rule" }), el("th", { text: "action" }), el("th", { class: "num", text: "absorbed" }), el("th", { text: "why" }))),
    el("tbody", null, rules.map((r) => el("tr", null, el("td", null, el("code", { text: r.name })), el("td", { text: r.action }),
      el("td", { class: "num", text: String(r.absorbed) }), el("td", { text: r.why || "" })))))
    : el("p", { class: "muted", text: "no [[diff.rules]]: every difference counts" }));
}

// -- endpoints ------------------------------------------------------------------------------
function usage(u, target, key, fmt) {
  const v = u && u[target] ? u[target][key] : undefined;
  return v === undefined || v === null ? "-" : fmt(v);
}
function endpointRow(e, selected) {
  const beyond = e.divergent_beyond_noise_ratio;
  return el("tr", { class: "endpoint" + (e.id === selected ? " selected" : ""), "data-id": e.id },
    el("td", { class: "name" }, el("a", { href: link("e", e.id) }, el("code", { text: e.endpoint }))),
    el("td", { class: "num", text: String(e.exchanges) }),
    el("td", { class: "num" + (beyond > 0 ? " divergent" : ""), text: pct(beyond) }),
    el("td", { class: "num", text: pct(e.divergent_ratio) }),
    el("td", { class: "num", text: pct(e.noise_ratio) }),
    el("td", { class: "num", text: (e.errors.candidate || 0) + "/" + (e.errors.primary || 0) }),
    el("td", { class: "num", text: ms(e.latency.primary?.p50) + "/" + ms(e.latency.candidate?.p50) }),
    el("td", { class: "num", text: ms(e.latency.primary?.p99) + "/" + ms(e.latency.candidate?.p99) }),
    el("td", { class: "num", text: usage(e.usage, "primary", "db_calls_per_request", (x) => x.toFixed(1)) + "/" + usage(e.usage, "candidate", "db_calls_per_request", (x) => x.toFixed(1)) }),
    el("td", { class: "num", text: usage(e.usage, "primary", "cache_hit_ratio", pct) + "/" + usage(e.usage, "candidate", "cache_hit_ratio", pct) }));
}
function renderEndpoints() {
  const r = state.report;
  if (!r) return;
  const query = $("filter").value.trim().toLowerCase();
  const shown = query ? r.endpoints.filter((e) => e.endpoint.toLowerCase().includes(query)) : r.endpoints;
  const selected = route().endpoint;
  $("endpoints").tBodies[0].replaceChildren(...shown.map((e) => endpointRow(e, selected)));
  $("endpoint-count").textContent = query ? `${shown.length} of ${r.endpoints.length}` : `${r.endpoints.length}, worst first`;
}

function renderReport(r) {
  state.report = r;
  const t = r.totals;
  $("summary").textContent = `${t.exchanges} exchanges · ${pct(t.divergent_ratio)} any diff · ${t.endpoints} endpoints · last ${Math.round(r.window.seconds)} s`;
  renderMirroring(r.mirroring || {});
  renderRules(r.rules || []);
  renderEndpoints();
  renderDetail();
}

// -- charts (uPlot) ---------------------------------------------------------------------------
const COLORS = { primary: "#2563eb", secondary: "#9ca3af", candidate: "#dc2626", rate: "#2563eb", beyond: "#dc2626", any: "#f59e0b" };
function chartWidth(box) { return Math.max(240, box.clientWidth || 400); }
function drawChart(key, box, options, data) {
  const old = state.charts[key];
  if (old && old.box === box && old.series === options.series.length) {
    old.plot.setData(data);
    if (options.scales.x.time) old.plot.setScale("x", { min: timeRange(data[0])[0], max: timeRange(data[0])[1] });
    if (Math.abs(old.plot.width - chartWidth(box)) > 4) old.plot.setSize({ width: chartWidth(box), height: options.height });
    return;
  }
  if (old) old.plot.destroy();
  box.replaceChildren();
  const plot = new uPlot({ ...options, width: chartWidth(box) }, data, box);
  if (options.scales.x.time) plot.setScale("x", { min: timeRange(data[0])[0], max: timeRange(data[0])[1] });
  state.charts[key] = { plot, box, series: options.series.length };
}

function timelineData(h) {
  const rate = h.exchanges.map((n, i) => (h.seconds[i] > 0 ? n / h.seconds[i] : 0));
  const any = h.divergent.map((n, i) => (h.exchanges[i] ? (100 * n) / h.exchanges[i] : null));
  const beyond = h.beyond_noise_ratio.map((x) => 100 * x);
  return [h.t, rate, any, beyond];
}
function timeRange(t) {
  const now = Date.now() / 1000;
  const hi = t.length ? Math.max(t[t.length - 1], now) : now;
  const lo = t.length ? Math.min(t[0], hi - 600) : hi - 600;
  return [lo, hi];
}
function timelineOptions(height) {
  return {
    height,
    legend: { live: false },
    // at least the last 10 minutes, so that a few points are not drawn across years
    scales: { x: { time: true, auto: false, range: (u) => timeRange(u.data[0]) }, pct: { range: (u, lo, hi) => [0, Math.max(1, hi * 1.1)] } },
    series: [
      {},
      { label: "req/s", stroke: COLORS.rate, width: 1.5, fill: "rgba(37,99,235,.08)", value: (u, v) => v === null ? "-" : v.toFixed(1) },
      { label: "any diff %", stroke: COLORS.any, width: 1, scale: "pct", value: (u, v) => v === null ? "-" : v.toFixed(1) },
      { label: "beyond noise %", stroke: COLORS.beyond, width: 2, scale: "pct", value: (u, v) => v === null ? "-" : v.toFixed(2) },
    ],
    axes: [{}, { label: "req/s", size: 50 }, { scale: "pct", side: 1, label: "%", grid: { show: false }, size: 40 }],
  };
}

// Latency by percentile, HdrHistogram-style: x is -log10(1 - p), so 90, 99 and 99.9 are
// evenly spaced and the tail, where releases differ, gets most of the width.
const tailX = (p) => -Math.log10(1 - Math.min(p, 99.95) / 100);
const MARKS = [["p50", 50], ["p99", 99]];
function latencyChart(box, cdf) {
  const targets = ["primary", "secondary", "candidate"].filter((t) => cdf.targets[t]);
  if (!targets.length) { box.replaceChildren(el("p", { class: "muted", text: "no answers yet" })); return; }
  const percentiles = cdf.targets[targets[0]].percentile.filter((p) => p < 100);
  const data = [percentiles.map(tailX), ...targets.map((t) => cdf.targets[t].seconds.slice(0, percentiles.length).map((s) => s * 1000))];
  const options = {
    height: 220,
    legend: { live: false },
    scales: { x: { time: false, range: [0, tailX(99.9)] }, y: { distr: 3 } },
    series: [{ label: "percentile" }, ...targets.map((t) => ({ label: t, stroke: COLORS[t], width: t === "candidate" ? 2 : 1.5 }))],
    axes: [
      { splits: () => [0, 1, 2, 3], values: (u, splits) => splits.map((s) => (100 * (1 - Math.pow(10, -s))).toFixed(s > 2 ? 1 : 0) + "%") },
      { label: "ms", size: 50 },
    ],
    hooks: { draw: [(u) => {
      const ctx = u.ctx;
      ctx.save();
      ctx.strokeStyle = "#6b7280"; ctx.fillStyle = "#374151"; ctx.setLineDash([4, 4]); ctx.lineWidth = 1;
      ctx.font = `${Math.round(11 * devicePixelRatio)}px system-ui, sans-serif`;
      for (const [name, p] of MARKS) {
        const x = u.valToPos(tailX(p), "x", true);
        ctx.beginPath(); ctx.moveTo(x, u.bbox.top); ctx.lineTo(x, u.bbox.top + u.bbox.height); ctx.stroke();
        ctx.fillText(name, x + 4, u.bbox.top + 12 * devicePixelRatio);
      }
      ctx.restore();
    }] },
  };
  drawChart("latency", box, options, data);
  const at = (t, p) => { const i = cdf.targets[t].percentile.indexOf(p); return i < 0 ? null : cdf.targets[t].seconds[i]; };
  $("latency-marks").replaceChildren(el("table", { class: "marks" },
    el("tr", null, el("th"), ...targets.map((t) => el("th", { class: "num " + t, text: t }))),
    ...MARKS.map(([name, p]) => el("tr", null, el("th", { text: name }), ...targets.map((t) => el("td", { class: "num", text: ms(at(t, p)) + " ms" })))),
    el("tr", null, el("th", { text: "answers" }), ...targets.map((t) => el("td", { class: "num", text: String(cdf.targets[t].count) })))));
}

// -- one endpoint: fields and samples -----------------------------------------------------
function renderDetail() {
  const at = route();
  const r = state.report;
  const e = r && at.endpoint ? r.endpoints.find((x) => x.id === at.endpoint) : null;
  $("detail").hidden = !e;
  $("sample").hidden = !(e && at.sample);
  if (!e) {
    if (r && at.endpoint) showError(new Error("no endpoint with id " + at.endpoint + " (reset since?)"));
    return;
  }
  $("detail-title").replaceChildren("Endpoint ", el("code", { text: e.endpoint }),
    el("span", { class: "muted", text: ` ${e.exchanges} exchanges · ${pct(e.divergent_beyond_noise_ratio)} beyond noise · statuses ` +
      Object.entries(e.status).map(([t, c]) => t + " " + Object.entries(c).map(([s, n]) => s + "×" + n).join(" ")).join(" · ") }));
  $("fields").tBodies[0].replaceChildren(...(e.fields.length ? e.fields.map((f) => el("tr", { class: "field" + (f.path === at.field ? " selected" : "") },
    el("td", null, el("a", { href: link("e", e.id, "f", f.path) }, el("code", { text: f.path }))),
    el("td", { text: Object.entries(f.kinds).map(([k, n]) => k + " " + n).join(", ") }),
    el("td", { class: "num", text: `${f.divergent} (${pct(f.divergent_ratio)})` }),
    el("td", { class: "num", text: pct(f.noise_ratio) }),
    el("td", { class: f.decision === "divergent" ? "divergent" : "muted", title: f.why, text: f.decision }))) :
    [el("tr", null, el("td", { class: "muted", text: "no differing fields" }))]));
  renderSamples(e, at);
}

function renderSamples(e, at) {
  const data = state.samplesFor === e.id ? state.samples : null;
  const box = $("samples");
  if (!data) { box.replaceChildren(el("p", { class: "muted", text: "loading samples…" })); return; }
  const list = at.field ? data.samples.filter((s) => s.differences.some((d) => d.path === at.field || d.generic_path === at.field)) : data.samples;
  $("samples-title").replaceChildren("Samples ", el("span", { class: "muted", text: at.field ? `with a difference at ${at.field} (${list.length} of ${data.samples.length}) · ` : `${data.samples.length} recent divergent exchanges` }),
    ...(at.field ? [el("a", { href: link("e", e.id), text: "show all" })] : []));
  box.replaceChildren(list.length ? el("table", { class: "samples" },
    el("thead", null, el("tr", null, ...["time", "request", "status p/c/s", "ms p/c/s", "differences"].map((h) => el("th", { text: h })))),
    el("tbody", null, list.map((s) => {
      const a = s.answers;
      const trio = (k) => ["primary", "candidate", "secondary"].filter((t) => a[t]).map((t) => a[t][k] ?? "-").join("/");
      return el("tr", { class: "sample" + (String(s.exchange) === at.sample ? " selected" : "") },
        el("td", { class: "nowrap", text: when(s.time) }),
        el("td", { class: "name" }, el("a", { href: link("e", e.id, "s", s.exchange) }, el("code", { text: s.request.method + " " + s.request.target }))),
        el("td", { class: "num", text: trio("status") }),
        el("td", { class: "num", text: trio("latency_ms") }),
        el("td", { class: "diffs", text: s.differences.map((d) => d.path + " " + d.kind).join(", ") + (s.overflow ? ` (+${s.overflow})` : "") }));
    }))) : el("p", { class: "muted", text: "no samples (samples are kept of divergent exchanges only)" }));
  const sample = at.sample ? data.samples.find((s) => String(s.exchange) === at.sample) : null;
  if (at.sample) renderSample(e, sample, at.sample);
}

// -- one sample, side by side ---------------------------------------------------------------
// Paths as the diff engine writes them: $.name, $["odd key"], $.items[3].
const IDENT = /^[A-Za-z_][A-Za-z0-9_]*$/;
const keyPath = (parent, key) => parent + (IDENT.test(key) ? "." + key : "[" + JSON.stringify(key) + "]");
const FOLD_LINES = 40;

// JSON as lines, each with the path of the value it shows.
function jsonLines(value, path = "$", indent = "", prefix = "", last = true, out = []) {
  const comma = last ? "" : ",";
  if (Array.isArray(value) && value.length) {
    out.push({ path, text: indent + prefix + "[" });
    value.forEach((v, i) => jsonLines(v, path + "[" + i + "]", indent + "  ", "", i === value.length - 1, out));
    out.push({ path, text: indent + "]" + comma });
  } else if (value && typeof value === "object" && Object.keys(value).length) {
    out.push({ path, text: indent + prefix + "{" });
    const keys = Object.keys(value);
    keys.forEach((k, i) => jsonLines(value[k], keyPath(path, k), indent + "  ", JSON.stringify(k) + ": ", i === keys.length - 1, out));
    out.push({ path, text: indent + "}" + comma });
  } else {
    out.push({ path, text: indent + prefix + JSON.stringify(value) + comma });
  }
  return out;
}
const within = (path, set) => { for (const p of set) if (path === p || path.startsWith(p + ".") || path.startsWith(p + "[")) return true; return false; };

// Lines of text compared with the primary's: longest common subsequence, bounded.
function lineDiff(reference, other) {
  const a = reference.split("\n"), b = other.split("\n");
  if (a.length * b.length > 250000) return b.map((text, i) => ({ text, mark: a[i] === text ? "" : "diff" }));
  const n = a.length, m = b.length, lcs = Array.from({ length: n + 1 }, () => new Uint16Array(m + 1));
  for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--) lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
  const out = [];
  let i = 0, j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && a[i] === b[j]) { out.push({ text: b[j], mark: "" }); i++; j++; }
    else if (j < m && (i >= n || lcs[i][j + 1] >= lcs[i + 1][j])) { out.push({ text: "+ " + b[j], mark: "diff" }); j++; }
    else { out.push({ text: "- " + a[i], mark: "gone" }); i++; }
  }
  return out;
}

function bodyLines(answer, role, primary, marks) {
  if (answer.error) return [{ text: "no answer: " + answer.error, mark: "diff" }];
  if (answer.body === null || answer.body === undefined) return [{ text: answer.body_bytes ? `(${answer.body_bytes} bytes, not shown: too large or undecodable)` : "(empty body)", mark: "" }];
  const cut = answer.body_bytes > new TextEncoder().encode(answer.body).length;
  let parsed;
  try { parsed = cut ? undefined : JSON.parse(answer.body); } catch (_) { parsed = undefined; }
  if (parsed !== undefined) {
    return jsonLines(parsed).map((line) => ({ text: line.text, mark: within(line.path, marks.divergent) ? "diff" : within(line.path, marks.noise) ? "noise" : "" }));
  }
  const lines = role === "primary" || !primary || primary.body === null || primary.body === undefined
    ? answer.body.split("\n").map((text) => ({ text, mark: "" })) : lineDiff(primary.body, answer.body);
  if (cut) lines.push({ text: `… first ${answer.body.length} characters of ${answer.body_bytes} bytes`, mark: "noise" });
  return lines;
}

function linesBlock(lines) {
  const render = (part) => el("pre", { class: "code" }, part.map((l) => el("span", { class: "line " + l.mark, text: l.text + "\n" })));
  if (lines.length <= FOLD_LINES) return render(lines);
  // Long bodies fold to the lines that differ (with context), the rest behind a toggle.
  const interesting = lines.map((l, i) => (l.mark === "diff" || l.mark === "gone" ? i : -1)).filter((i) => i >= 0);
  const keep = new Set();
  for (const i of interesting.length ? interesting : [0]) for (let k = Math.max(0, i - 3); k <= Math.min(lines.length - 1, i + 3); k++) keep.add(k);
  for (let k = 0; k < Math.min(5, lines.length); k++) keep.add(k);
  const folded = [];
  let skipped = 0;
  lines.forEach((l, i) => {
    if (keep.has(i)) {
      if (skipped) folded.push({ text: `  ⋯ ${skipped} lines`, mark: "fold" });
      skipped = 0; folded.push(l);
    } else skipped += 1;
  });
  if (skipped) folded.push({ text: `  ⋯ ${skipped} lines`, mark: "fold" });
  return el("div", null, render(folded), el("details", null, el("summary", { text: `all ${lines.length} lines` }), render(lines)));
}

function headerTable(answer, others, marks) {
  const headers = answer.headers || [];
  return el("table", { class: "headers" }, el("tbody", null, headers.map(([name, value]) => {
    const path = "header." + name.toLowerCase();
    const mark = marks.divergent.has(path) ? "diff" : marks.noise.has(path) ? "noise" : "";
    return el("tr", { class: mark }, el("th", { text: name }), el("td", { text: value }));
  })));
}

function headerSummary(answer, marks) {
  const names = (answer.headers || []).map(([name]) => "header." + name.toLowerCase());
  const differ = names.filter((p) => marks.divergent.has(p)).length;
  const noisy = names.filter((p) => marks.noise.has(p)).length;
  return `${names.length} headers` + (differ ? ` · ${differ} differ` : "") + (noisy ? ` · ${noisy} noise` : "");
}

function renderSample(e, s, exchange) {
  if (!s) {
    $("sample-title").textContent = "Sample " + exchange;
    $("sample-meta").textContent = "This sample is no longer kept (newer ones replaced it, or the report was reset).";
    $("sample-diffs").replaceChildren();
    $("sample-columns").replaceChildren();
    return;
  }
  $("sample-title").replaceChildren("Sample ", el("code", { text: s.request.method + " " + s.request.target }));
  $("sample-meta").textContent = `exchange ${s.exchange} · ${new Date(s.time * 1000).toLocaleString()} · ` +
    s.request.headers.map(([k, v]) => k + ": " + v).join(" · ");
  // Divergent: where the candidate differs and the secondary agrees with the primary (or
  // there is no secondary). Noise: where the secondary differs too, or the endpoint's field
  // decision says noise.
  const noiseFields = new Set(e.fields.filter((f) => f.decision !== "divergent").map((f) => f.path));
  const marks = { divergent: new Set(), noise: new Set() };
  for (const d of s.differences) {
    const secondaryDiffers = "secondary" in d && JSON.stringify(d.secondary) !== JSON.stringify(d.primary);
    const noisy = secondaryDiffers || noiseFields.has(d.generic_path) || noiseFields.has(d.path);
    (noisy ? marks.noise : marks.divergent).add(d.path);
  }
  $("sample-diffs").replaceChildren(el("table", { class: "diff-list" },
    el("thead", null, el("tr", null, ...["field", "kind", "primary", "candidate", "secondary"].map((h) => el("th", { text: h })))),
    el("tbody", null, s.differences.map((d) => el("tr", { class: marks.noise.has(d.path) ? "noise" : "diff" },
      el("td", null, el("code", { text: d.path })), el("td", { text: d.kind }),
      el("td", null, el("code", { text: JSON.stringify(d.primary) })), el("td", null, el("code", { text: JSON.stringify(d.candidate) })),
      el("td", null, el("code", { text: "secondary" in d ? JSON.stringify(d.secondary) : "-" })))))));
  const roles = ["primary", "candidate", "secondary"].filter((t) => s.answers[t]);
  const columns = $("sample-columns");
  columns.className = "columns n" + roles.length;
  columns.replaceChildren(...roles.map((role) => {
    const a = s.answers[role];
    return el("div", { class: "column " + role },
      el("h3", null, el("span", { class: "role " + role, text: role }), ` ${a.error ? "error " + a.error : a.status} · ${a.latency_ms} ms · ${a.body_bytes} bytes`),
      // open when a header really differs: then the headers are the finding
      el("details", { class: "headers-fold", open: [...marks.divergent].some((p) => p.startsWith("header.")) },
        el("summary", { text: headerSummary(a, marks) }), headerTable(a, roles, marks)),
      linesBlock(bodyLines(a, role, s.answers.primary, marks)));
  }));
}

// -- refreshing: light things often, heavy things rarely --------------------------------------
async function loadReport() {
  try { renderReport(await api("/api/v1/report")); showError(null); } catch (err) { showError(err); }
  $("updated").textContent = "updated " + new Date().toLocaleTimeString();
}
async function loadVerdict() { try { renderVerdict(await api("/api/v1/verdict")); } catch (err) { showError(err); } }
async function loadHistory() {
  try {
    const overall = await api("/api/v1/history");
    drawChart("overall", $("overall-chart"), timelineOptions(180), timelineData(overall));
    const at = route();
    if (at.endpoint && !$("detail").hidden) {
      const h = await api("/api/v1/history?endpoint=" + encodeURIComponent(at.endpoint));
      drawChart("endpoint", $("endpoint-chart"), timelineOptions(220), timelineData(h));
    }
  } catch (err) { showError(err); }
}
async function loadEndpoint() {
  const at = route();
  if (!at.endpoint) return;
  try {
    const [samples, cdf] = await Promise.all([
      api("/api/v1/endpoints/" + encodeURIComponent(at.endpoint) + "/samples"),
      api("/api/v1/endpoints/" + encodeURIComponent(at.endpoint) + "/latency"),
    ]);
    state.samples = samples; state.samplesFor = at.endpoint;
    renderDetail();
    if (!$("detail").hidden) latencyChart($("latency-chart"), cdf);
  } catch (err) { showError(err); }
}

function every(seconds, load, now = true) { if (now) load(); setInterval(() => { if (!document.hidden) load(); }, seconds * 1000); }

$("kill").addEventListener("click", toggleMirroring);
$("filter").addEventListener("input", renderEndpoints);
window.addEventListener("hashchange", async () => {
  const at = route();
  const newEndpoint = state.samplesFor !== at.endpoint;
  if (newEndpoint) { state.samples = null; state.samplesFor = null; }
  renderEndpoints(); renderDetail();
  await Promise.all([loadEndpoint(), loadHistory()]);
  // Bring what was opened into view: a sample, or another endpoint (not a field: its
  // samples are right below the pointer).
  const target = at.sample ? $("sample") : newEndpoint && at.endpoint ? $("detail") : null;
  if (target && !target.hidden) target.scrollIntoView({ block: "start" });
});
window.addEventListener("resize", () => { for (const c of Object.values(state.charts)) c.plot.setSize({ width: chartWidth(c.box), height: c.plot.height }); });

(async () => {
  await loadReport();
  every(3, loadReport, false);
  every(5, loadVerdict);
  every(10, loadHistory);
  every(5, loadEndpoint);
  const target = route().sample ? $("sample") : route().endpoint ? $("detail") : null;
  if (target && !target.hidden) target.scrollIntoView({ block: "start" });
})();
