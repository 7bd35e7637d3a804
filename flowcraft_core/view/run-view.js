// The run view: plain browser JavaScript, no library, no build step, no network but this app's API.
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const ENDED = ["completed", "failed", "cancelled"];
  const STATES = ["completed", "failed", "awaiting", "pending", "skipped"];
  const params = new URLSearchParams(location.search);
  const key = params.get("code");
  // The page lives at <prefix>/view; the API beside it.
  const api = location.pathname.replace(/\/view\/?$/, "");
  const $ = (id) => document.getElementById(id);
  let pageTokens = [null];   // token of each page shown so far (null: the first)
  let nextToken = null;
  let current = null;        // run id shown in the detail pane
  let timer = null;

  function say(text) { $("message").textContent = text || ""; }

  async function call(method, path, body) {
    const headers = { "Accept": "application/json" };
    if (key) headers["x-functions-key"] = key;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(api + path, { method, headers,
      body: body === undefined ? undefined : JSON.stringify(body) });
    const data = await response.json().catch(() => ({}));
    if (response.status >= 400) throw new Error(`${method} ${path}: ${response.status} ${data.detail || ""}`);
    return data;
  }

  function el(name, attrs, text, ns) {
    const node = ns ? document.createElementNS(SVG, name) : document.createElement(name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // ------------------------------------------------------------------------------------------- list
  async function loadList(token) {
    const query = new URLSearchParams();
    const status = $("f-status").value, blueprint = $("f-blueprint").value.trim();
    if (status) query.set("status", status);
    if (blueprint) query.set("blueprintId", blueprint);
    query.set("top", $("f-top").value || "20");
    if (token) query.set("continuationToken", token);
    try {
      const page = await call("GET", "/runs?" + query);
      const body = $("runs");
      body.replaceChildren();
      for (const run of page.runs) {
        const row = el("tr", { "data-run-id": run.runId });
        if (run.runId === current) row.classList.add("selected");
        row.append(el("td", {}, run.runId), el("td", {}, run.blueprintId || ""),
                   el("td", { class: "status " + run.status }, run.status),
                   el("td", {}, (run.createdAt || "").replace("T", " ").replace("Z", "")));
        row.addEventListener("click", () => { location.hash = "run=" + encodeURIComponent(run.runId); });
        body.append(row);
      }
      nextToken = page.continuationToken;
      $("next").disabled = !nextToken;
      $("page-info").textContent = `page ${pageTokens.length}, ${page.runs.length} run(s)` +
        (nextToken ? ", more on the next page" : "");
      say("");
    } catch (err) { say(err.message); }
  }

  // ----------------------------------------------------------------------------------------- detail
  function layout(blueprint) {
    // Layers by longest path from the start nodes over forward edges (back edges of loops ignored).
    const ids = blueprint.nodes.map((n) => n.id);
    const out = new Map(ids.map((id) => [id, []]));
    const indegree = new Map(ids.map((id) => [id, 0]));
    const back = new Set();
    const seen = new Set(), stack = new Set();
    for (const e of blueprint.edges) if (out.has(e.source) && out.has(e.target)) out.get(e.source).push(e.target);
    function visit(id) {
      seen.add(id); stack.add(id);
      for (const t of out.get(id)) {
        if (stack.has(t)) back.add(id + "\u0000" + t); else if (!seen.has(t)) visit(t);
      }
      stack.delete(id);
    }
    for (const id of ids) if (!seen.has(id)) visit(id);
    for (const e of blueprint.edges) {
      if (indegree.has(e.target) && !back.has(e.source + "\u0000" + e.target)) {
        indegree.set(e.target, indegree.get(e.target) + 1);
      }
    }
    const layer = new Map(ids.map((id) => [id, 0]));
    const queue = ids.filter((id) => indegree.get(id) === 0);
    while (queue.length) {
      const id = queue.shift();
      for (const t of out.get(id)) {
        if (back.has(id + "\u0000" + t)) continue;
        layer.set(t, Math.max(layer.get(t), layer.get(id) + 1));
        indegree.set(t, indegree.get(t) - 1);
        if (indegree.get(t) === 0) queue.push(t);
      }
    }
    const rows = new Map();
    const pos = new Map();
    for (const id of ids) {
      const l = layer.get(id), r = rows.get(l) || 0;
      rows.set(l, r + 1);
      pos.set(id, { x: 10 + l * 170, y: 10 + r * 56 });
    }
    return { pos, back, height: 20 + Math.max(1, ...rows.values()) * 56 };
  }

  function nodeStates(run, history, blueprint) {
    // A node with no execution is still ahead while the run goes, and was skipped once it ended.
    const idle = ENDED.includes(run.status) ? "skipped" : "pending";
    const states = new Map(blueprint.nodes.map((n) => [n.id, idle]));
    for (const entry of history.nodes) states.set(entry.nodeId, entry.status); // last execution wins
    for (const id of run.awaiting || []) states.set(id, "awaiting");
    return states;
  }

  function drawGraph(blueprint, states) {
    const svg = $("graph");
    for (const child of [...svg.children]) if (child.tagName !== "defs") child.remove();
    const { pos, back, height } = layout(blueprint);
    svg.setAttribute("height", height);
    for (const e of blueprint.edges) {
      const a = pos.get(e.source), b = pos.get(e.target);
      if (!a || !b) continue;
      const loop = back.has(e.source + "\u0000" + e.target);
      const d = loop
        ? `M ${a.x + 60} ${a.y + 36} C ${a.x + 60} ${a.y + 70}, ${b.x + 60} ${b.y + 70}, ${b.x + 60} ${b.y + 36}`
        : `M ${a.x + 130} ${a.y + 18} L ${b.x} ${b.y + 18}`;
      svg.append(el("path", { class: "edge", d, "data-source": e.source, "data-target": e.target }, undefined, true));
    }
    for (const n of blueprint.nodes) {
      const p = pos.get(n.id), state = states.get(n.id) || "pending";
      const g = el("g", { class: "node", "data-node-id": n.id, "data-state": state,
                          transform: `translate(${p.x},${p.y})` }, undefined, true);
      const rect = el("rect", { width: 130, height: 36, class: "state-" + state }, undefined, true);
      rect.append(el("title", {}, `${n.id} (${n.uses}): ${state}`, true));
      g.append(rect, el("text", { x: 8, y: 22 }, n.id.length > 18 ? n.id.slice(0, 17) + "\u2026" : n.id, true));
      svg.append(g);
    }
  }

  function drawTimeline(history) {
    const svg = $("timeline");
    svg.replaceChildren();
    const timed = history.nodes.filter((n) => n.startedAt != null && n.finishedAt != null);
    svg.setAttribute("height", 24 + timed.length * 20);
    if (!timed.length) { svg.append(el("text", { x: 4, y: 16, class: "muted" }, "no executions yet", true)); return; }
    const t0 = Math.min(...timed.map((n) => n.startedAt)), t1 = Math.max(...timed.map((n) => n.finishedAt));
    const width = (svg.clientWidth || 600) - 260, span = Math.max(1, t1 - t0);
    timed.forEach((n, i) => {
      const y = 4 + i * 20;
      const x = 160 + ((n.startedAt - t0) / span) * width;
      const w = Math.max(2, ((n.finishedAt - n.startedAt) / span) * width);
      svg.append(el("text", { x: 4, y: y + 12, "font-size": 12 },
                    n.nodeId + (n.iteration ? ` #${n.iteration}` : ""), true));
      const bar = el("rect", { class: "bar state-" + n.status, x, y, width: w, "data-node-id": n.nodeId,
                               "data-iteration": n.iteration }, undefined, true);
      bar.append(el("title", {}, `${n.nodeId}: ${n.status}, ${n.durationMs} ms, ${n.attempts} attempt(s)`, true));
      svg.append(bar, el("text", { x: x + w + 4, y: y + 12, "font-size": 11, fill: "#616161" },
                         `${n.durationMs} ms`, true));
    });
  }

  async function loadRun(runId) {
    current = runId;
    clearTimeout(timer);
    try {
      const [run, history] = await Promise.all([call("GET", "/runs/" + encodeURIComponent(runId)),
                                                call("GET", "/runs/" + encodeURIComponent(runId) + "/history")]);
      const blueprint = await call("GET", "/blueprints/" + encodeURIComponent(run.blueprintId));
      if (current !== runId) return;
      $("detail").hidden = false;
      $("d-run").textContent = run.runId;
      $("d-status").textContent = run.status;
      $("d-status").className = "status " + run.status;
      drawGraph(blueprint, nodeStates(run, history, blueprint));
      drawTimeline(history);
      const errors = (run.result && run.result.errors) || [];
      const box = $("errors");
      box.replaceChildren();
      box.className = errors.length || run.reason ? "error" : "muted";
      if (run.reason) box.append(el("p", {}, run.reason));
      for (const e of errors) box.append(el("p", {}, `${e.nodeId || ""}: ${e.message || JSON.stringify(e)}`));
      if (!errors.length && !run.reason) box.textContent = "none";
      const context = run.result && run.result.context;
      $("context").textContent = context ? JSON.stringify(context, null, 2) : "(shown once the run completed)";
      $("cancel").disabled = ENDED.includes(run.status);
      $("resume").disabled = run.status !== "awaiting";
      for (const row of document.querySelectorAll("tr[data-run-id]")) {
        row.classList.toggle("selected", row.dataset.runId === runId);
      }
      if (!ENDED.includes(run.status)) timer = setTimeout(() => loadRun(runId), 1500);
      say("");
    } catch (err) { say(err.message); }
  }

  function route() {
    const match = /^#run=(.+)$/.exec(location.hash);
    if (match) loadRun(decodeURIComponent(match[1]));
  }

  $("filters").addEventListener("submit", (ev) => { ev.preventDefault(); pageTokens = [null]; loadList(null); });
  $("first").addEventListener("click", () => { pageTokens = [null]; loadList(null); });
  $("next").addEventListener("click", () => { pageTokens.push(nextToken); loadList(nextToken); });
  $("cancel").addEventListener("click", async () => {
    try {
      await call("POST", "/runs/" + encodeURIComponent(current) + "/cancel", { reason: "cancelled from the run view" });
      await Promise.all([loadRun(current), loadList(pageTokens[pageTokens.length - 1])]);
    } catch (err) { say(err.message); }
  });
  $("resume").addEventListener("click", async () => {
    const action = $("resume-action").value.trim();
    if (!action) { say("type the action to resume with (the waiting node's outgoing edge, e.g. approve)"); return; }
    try {
      await call("POST", "/runs/" + encodeURIComponent(current) + "/resume", { action });
      await loadRun(current);
    } catch (err) { say(err.message); }
  });
  window.addEventListener("hashchange", route);
  const legend = document.querySelector(".legend");
  for (const state of STATES) {
    const item = el("span", {}, state);
    item.prepend(el("i", { style: `background: var(--${state})` }));
    legend.append(item);
  }
  loadList(null);
  route();
})();
