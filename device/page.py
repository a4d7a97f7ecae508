"""The live status page (GET /): one self-contained HTML document, no asset from anywhere.

It polls GET /history (JSON: the last windows' smoothed scores from the agent's bounded ring,
recent events, mic level, counters) every REFRESH_MS and draws the smoothed P(spoof) as an
SVG polyline, with the threshold as a dashed line. The token (when the API has one) is taken
from the page's own URL (?access_token=...) and sent as an Authorization header.

When the agent is unreachable (restarting, stopped, or no answer within FETCH_TIMEOUT_MS) the
page says so: the decision reads "unreachable", the score "-", and the last plot and events
are greyed out under "not live: last data HH:MM:SS". It keeps polling and, once the agent
answers again (a restarted agent on the same address), draws the new data by itself.

For the tests, the page's <body> carries data-state ("loading", "live", "unreachable"),
data-draws (successful refreshes), data-loaded-ms (from navigation start to the first data
drawn), and the plot's <svg> data-points (how many points are drawn).
"""

from __future__ import annotations

REFRESH_MS = 2000
FETCH_TIMEOUT_MS = 5000

PAGE_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>clad-agent</title>
<style>
body{font:15px system-ui,sans-serif;margin:0;background:#111;color:#ddd}
header{padding:12px 20px;background:#1b1b1b;display:flex;gap:24px;align-items:center}
#decision{font-size:28px;font-weight:700;padding:6px 16px;border-radius:6px;background:#333}
#decision.spoof{background:#b3261e;color:#fff}#decision.bonafide{background:#1e7b34;color:#fff}
#decision.silence{background:#444}
#decision.unreachable{background:#5f4b00;color:#fff}
.stale{opacity:.35}#stale{color:#f2b705}
main{padding:12px 20px;display:grid;grid-template-columns:2fr 1fr;gap:16px}
section{background:#1b1b1b;border-radius:6px;padding:10px 14px}
h2{font-size:14px;margin:0 0 8px;color:#aaa;font-weight:600}
table{border-collapse:collapse;width:100%}td{padding:2px 6px;border-bottom:1px solid #2a2a2a}
td.k{color:#999}#meter{height:10px;background:#333;border-radius:5px;overflow:hidden}
#meter div{height:100%;background:#4c8bf5;width:0}
#err{color:#f28b82}svg text{fill:#999;font-size:11px}
</style></head>
<body data-loaded-ms="" data-state="loading" data-draws="0">
<header><div id="decision">...</div>
<div>smoothed P(spoof) <b id="smoothed">-</b></div><div id="err"></div></header>
<main>
<section><h2>Smoothed P(spoof), last <span id="span">-</span> s <span id="stale"></span></h2>
<svg id="plot" viewBox="0 0 600 220" width="100%" data-points="0">
<rect x="40" y="10" width="550" height="180" fill="#151515" stroke="#333"/>
<line id="thr" x1="40" x2="590" stroke="#f2b705" stroke-dasharray="4 4"/>
<polyline id="line" fill="none" stroke="#4c8bf5" stroke-width="2" points=""/>
<text x="34" y="14" text-anchor="end">1</text><text x="34" y="194" text-anchor="end">0</text>
<text x="590" y="210" text-anchor="end">now</text><text id="t0" x="40" y="210"></text>
</svg></section>
<section><h2>Agent</h2>
<div>mic level <span id="level">-</span> dBFS</div><div id="meter"><div></div></div>
<table id="counters"></table></section>
<section style="grid-column:1/3"><h2>Recent events</h2><table id="events"></table></section>
</main>
<script>
"use strict";
const REFRESH_MS = __REFRESH_MS__;
const FETCH_TIMEOUT_MS = __FETCH_TIMEOUT_MS__;
const token = new URLSearchParams(location.search).get("access_token");
const headers = token ? {"Authorization": "Bearer " + token} : {};
const $ = (id) => document.getElementById(id);
function cell(row, text, cls) {
  const td = row.insertCell(); td.textContent = text; if (cls) td.className = cls;
}
function fmt(v, d) { return (v === null || v === undefined) ? "-" : Number(v).toFixed(d); }
function draw(h) {
  const d = $("decision"); d.textContent = h.decision; d.className = h.decision;
  $("smoothed").textContent = fmt(h.smoothed, 3);
  const pts = h.points.filter((p) => p[1] !== null);
  // the x axis spans the data held (at least 30 s, at most the ring's span_s)
  const held = h.points.length ? h.now_s - h.points[0][0] : h.span_s;
  const span = Math.max(Math.min(h.span_s, held), 30);
  const x = (t) => 40 + 550 * (1 - Math.min(h.now_s - t, span) / span);
  const y = (v) => 190 - 180 * Math.max(0, Math.min(1, v));
  $("line").setAttribute("points", pts.map((p) => x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1)).join(" "));
  $("plot").setAttribute("data-points", String(pts.length));
  $("span").textContent = Math.round(span); $("t0").textContent = "-" + Math.round(span) + " s";
  if (h.threshold !== null) { $("thr").setAttribute("y1", y(h.threshold)); $("thr").setAttribute("y2", y(h.threshold)); }
  $("level").textContent = fmt(h.rms_dbfs, 1);
  const level = h.rms_dbfs === null ? 0 : Math.max(0, Math.min(1, (h.rms_dbfs + 90) / 90));
  $("meter").firstElementChild.style.width = (100 * level).toFixed(0) + "%";
  const c = $("counters"); c.textContent = "";
  for (const [k, v] of Object.entries(h.counters)) { const r = c.insertRow(); cell(r, k, "k"); cell(r, String(v)); }
  const e = $("events"); e.textContent = "";
  for (const ev of h.events.slice().reverse()) {
    const r = e.insertRow(); cell(r, ev.time || "", "k"); cell(r, ev.type);
    cell(r, ev.decision || ev.source_state || ev.reason || ""); cell(r, "smoothed " + fmt(ev.smoothed, 3));
  }
  if (!document.body.dataset.loadedMs) document.body.dataset.loadedMs = performance.now().toFixed(1);
}
let lastDataAt = null;
function live(h) {
  draw(h);
  lastDataAt = new Date();
  const b = document.body;
  b.dataset.state = "live"; b.dataset.draws = String(Number(b.dataset.draws) + 1);
  $("err").textContent = ""; $("stale").textContent = "";
  for (const id of ["plot", "events", "counters"]) $(id).classList.remove("stale");
}
function unreachable(reason) {
  // never leave the last decision on screen as if it were current
  const d = $("decision"); d.textContent = "unreachable"; d.className = "unreachable";
  $("smoothed").textContent = "-"; $("level").textContent = "-";
  $("meter").firstElementChild.style.width = "0%";
  for (const id of ["plot", "events", "counters"]) $(id).classList.add("stale");
  $("stale").textContent = lastDataAt ? "(not live: last data " + lastDataAt.toLocaleTimeString() + ")" : "";
  $("err").textContent = "agent unreachable (" + reason + "); retrying every " + REFRESH_MS / 1000 + " s";
  document.body.dataset.state = "unreachable";
}
async function tick() {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), FETCH_TIMEOUT_MS);
  try {
    const response = await fetch("history", {headers, cache: "no-store", signal: abort.signal});
    if (response.status === 401) throw new Error("HTTP 401: a missing or wrong token; open the page as /?access_token=TOKEN");
    if (!response.ok) throw new Error("HTTP " + response.status);
    live(await response.json());
  } catch (error) {
    unreachable(error.name === "AbortError" ? "no answer in " + FETCH_TIMEOUT_MS / 1000 + " s" : error.message);
  } finally {
    clearTimeout(timer);
  }
  setTimeout(tick, REFRESH_MS);
}
tick();
</script></body></html>
""".replace("__REFRESH_MS__", str(REFRESH_MS)).replace(
    "__FETCH_TIMEOUT_MS__", str(FETCH_TIMEOUT_MS)
)
