// kiln dashboard: reads the JSON API with fetch and redraws the current
// view. Live by polling (the Functions host buffers responses, so nothing
// can be streamed to the page): builds every 2 s, the gallery every 10 s,
// nothing while the tab is hidden. Everything the API says is put on the
// page as text (textContent, text nodes, attributes), never as markup.
"use strict";
(() => {
  const BUILDS_POLL_MS = 2000;
  const GALLERY_POLL_MS = 10000;
  const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
  const KEY_STORE = "kiln.apiKey";
  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;

  // ---- talking to the API -------------------------------------------------

  class Unauthorized extends Error {}
  let apiKey = sessionStorage.getItem(KEY_STORE);

  async function api(path, opts = {}) {
    const headers = Object.assign({ accept: "application/json" }, opts.headers || {});
    if (apiKey) headers.authorization = "Bearer " + apiKey;
    const r = await fetch(path, Object.assign({}, opts, { headers, cache: "no-store" }));
    if (r.status === 401) {
      askForKey(apiKey ? "The API refused this key." : "");
      throw new Unauthorized("the API asks for a key");
    }
    return r;
  }

  async function getJson(path, opts) {
    const r = await api(path, opts);
    const body = await r.json().catch(() => null);
    if (!r.ok) {
      const why = body && body.error ? body.error : r.statusText;
      throw new Error(`${path} answered ${r.status}: ${why}`);
    }
    return body;
  }

  function askForKey(note) {
    const form = $("key-form");
    form.hidden = false;
    if (note) say(note, true);
    $("key-input").focus();
  }

  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    apiKey = $("key-input").value.trim() || null;
    if (apiKey) sessionStorage.setItem(KEY_STORE, apiKey);
    $("key-input").value = "";
    $("key-form").hidden = true;
    say("");
    refreshNow();
  });

  // ---- building elements from data -----------------------------------------

  /** An element with attributes and children; strings become text nodes. */
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : String(c));
    }
    return e;
  }

  /** A table row whose cells carry their column names (narrow-screen cards). */
  function row(labels, cells, attrs) {
    // One child per cell: on narrow screens a cell is a grid of its label and this.
    return el("tr", attrs, cells.map((c, i) => el("td", { "data-label": labels[i], class: c && c.cls },
      el("div", { class: "cell" }, c && c.node !== undefined ? c.node : c))));
  }

  function stateKind(s) {
    switch (s) {
      case "succeeded": return "ok";
      case "failed": return "bad";
      case "canceled": case "canceling": return "off";
      default: return "run";
    }
  }

  const badge = (text, kind) => el("span", { class: "state " + kind, text });
  const stateBadge = (s) => badge(s, stateKind(s));

  function fmtTime(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "").replace(/Z$/, "") + " UTC";
  }

  function fmtDur(seconds) {
    if (seconds === undefined || seconds === null || Number.isNaN(seconds)) return "–";
    const s = Math.max(0, seconds);
    if (s < 10) return s.toFixed(1) + " s";
    if (s < 60) return Math.round(s) + " s";
    if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
    return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  }

  function triggerText(t, requestedBy) {
    if (!t) return "–";
    switch (t.kind) {
      case "schedule": return "schedule " + t.cycle;
      case "baseImage": return "base image " + t.version;
      case "manual": return requestedBy ? "manual, by " + requestedBy : "manual";
      default: return t.kind;
    }
  }

  /** Text that may wrap after `:` and `/` (ids and image names have no spaces). */
  function breakable(text, cls) {
    const parts = String(text).split(/(?<=[:/])/);
    return el("span", { class: cls }, parts.flatMap((p, i) => (i ? [el("wbr"), p] : [p])));
  }

  const sum = (o) => Object.values(o || {}).reduce((a, b) => a + b, 0);

  /** Replaces a container's children, keeping keyboard focus on the element with the same data-focus key. */
  function replaceKeepingFocus(container, children) {
    const focused = document.activeElement && container.contains(document.activeElement)
      ? document.activeElement.getAttribute("data-focus") : null;
    container.replaceChildren(...children);
    if (focused) {
      const again = [...container.querySelectorAll("[data-focus]")].find((e) => e.getAttribute("data-focus") === focused);
      if (again) again.focus();
    }
  }

  function say(text, isError) {
    const s = $("status");
    s.className = isError ? "error" : "";
    s.replaceChildren(...(Array.isArray(text) ? text : [text]));
  }

  // ---- requesting a build ----------------------------------------------------

  async function requestBuild(pipeline, reason, button) {
    if (button) button.disabled = true;
    say(`Requesting a build of ${pipeline}…`);
    try {
      const body = { pipeline, requestedBy: "dashboard" };
      if (reason) body.reason = reason;
      const r = await api("/api/builds", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      const v = await r.json().catch(() => ({}));
      if (!r.ok) {
        say(`The build of ${pipeline} was refused: ${v.error || r.statusText}`, true);
      } else if (v.build) {
        const link = el("a", { href: "#/builds/" + enc(v.build), id: "requested-build", "data-build": v.build, text: v.build });
        say(v.outcome === "coalesced"
          ? [`The request for ${pipeline} joined the queued build `, link, "."]
          : ["Build ", link, ` of ${pipeline} was ${v.outcome === "existing" ? "already requested" : "created"}.`]);
      } else {
        say(`The request for ${pipeline} is queued (key ${v.requestKey}); it shows in the builds list once admitted.`);
      }
      refreshNow();
    } catch (e) {
      if (!(e instanceof Unauthorized)) say(`The build of ${pipeline} could not be requested: ${e.message}`, true);
    } finally {
      if (button) button.disabled = false;
    }
  }

  $("build-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    await requestBuild($("build-pipeline").value, $("build-reason").value.trim(), $("build-submit"));
    $("build-reason").value = "";
  });

  let knownPipelines = "";
  function fillPipelineChoice(names) {
    const key = names.join("\n");
    if (key === knownPipelines) return;
    knownPipelines = key;
    const sel = $("build-pipeline");
    const chosen = sel.value;
    sel.replaceChildren(...names.map((n) => el("option", { value: n, text: n })));
    if (names.includes(chosen)) sel.value = chosen;
  }

  // ---- builds list -------------------------------------------------------------

  // Durations of builds (seconds), from their detail; a finished build's never changes.
  const durations = new Map();
  const lastStates = new Map();
  let buildsSignature = "";
  const BUILD_COLUMNS = ["Build", "State", "Phase", "Pipeline", "Version", "Trigger", "Attempt", "Created", "Duration", "Detail"];

  /** What the list says about a state beyond its name: why it failed or was canceled. */
  function stateDetail(st) {
    switch (st.state) {
      // Messages often start with their category already.
      case "failed": return st.message.startsWith(st.category + ":") ? st.message : `${st.category}: ${st.message}`;
      case "canceled": case "canceling": return st.reason;
      case "submitting": return st.not_before ? "retrying after " + fmtTime(st.not_before) : "";
      case "publishing": return st.replicating ? "waiting for replication" : "";
      case "succeeded": return st.failedRegions ? "replication failed in " + st.failedRegions.join(", ") : "";
      default: return "";
    }
  }

  function shorten(text, max) {
    return text.length > max ? text.slice(0, max - 1) + "…" : text;
  }

  async function refreshBuilds(still) {
    const [builds, pipelines] = await Promise.all([
      getJson("/api/builds?limit=50"),
      knownPipelines ? null : getJson("/api/pipelines"),
    ]);
    if (pipelines) fillPipelineChoice(pipelines.map((p) => p.name));
    const need = builds.filter((b) => !TERMINAL.has(b.state.state) || !durations.has(b.id)).slice(0, 20);
    await Promise.all(need.map(async (b) => {
      const d = await getJson("/api/builds/" + enc(b.id)).catch((e) => { if (e instanceof Unauthorized) throw e; return null; });
      if (d) durations.set(b.id, sum(d.secondsInState));
    }));
    if (!still()) return;
    announceChanges(builds);
    const rows = builds.map((b) => {
      const s = b.state.state;
      return row(BUILD_COLUMNS, [
        { node: el("a", { href: "#/builds/" + enc(b.id), class: "mono", "data-focus": "b:" + b.id, text: b.id }) },
        { node: stateBadge(s) },
        b.state.phase || (s === "publishing" && b.state.replicating ? "replicating" : "–"),
        b.pipeline,
        { node: b.version, cls: "num" },
        triggerText(b.trigger, b.requestedBy),
        { node: `${b.attempt} of ${b.maxAttempts}`, cls: "num" },
        { node: fmtTime(b.createdAt), cls: "num" },
        { node: fmtDur(durations.get(b.id)), cls: "num" },
        shorten(stateDetail(b.state), 140),
      ], { "data-build": b.id, "data-state": s });
    });
    const signature = JSON.stringify(builds.map((b) => [b.id, b.state, b.attempt, durations.get(b.id)]));
    if (signature === buildsSignature) return;
    buildsSignature = signature;
    if (rows.length === 0) {
      rows.push(el("tr", {}, el("td", { colspan: BUILD_COLUMNS.length, text: "No builds yet. Request one above, or from a pipeline on the gallery view." })));
    }
    replaceKeepingFocus($("builds-body"), rows);
  }

  /** Tells screen readers (through a polite live region of its own) when a build they saw changes state. */
  function announceChanges(builds) {
    const changed = [];
    for (const b of builds) {
      const before = lastStates.get(b.id);
      if (before && before !== b.state.state) changed.push(`${b.pipeline} build ${b.id}: ${before} → ${b.state.state}`);
      lastStates.set(b.id, b.state.state);
    }
    if (changed.length && changed.length <= 3) $("announce").textContent = changed.join("; ");
  }

  // ---- one build ---------------------------------------------------------------

  let log = null; // { id, attempt, offset, done }

  async function refreshBuild(id, still) {
    const d = await getJson("/api/builds/" + enc(id));
    if (!still()) return;
    const b = d.build;
    const s = d.state;
    const terminal = TERMINAL.has(s);
    document.title = `Build ${b.id} (${s}) — kiln`;
    $("build-heading").textContent = `Build ${b.id}`;
    const facts = [
      ["State", stateBadge(s)],
      ["Phase", b.state.phase || "–"],
      ["Pipeline", b.pipeline],
      ["Version", d.version],
      ["Trigger", triggerText(b.trigger, b.requestedBy)],
      ["Reason", b.reason || "–"],
      ["Attempt", `${b.attempt} of ${b.maxAttempts}`],
      ["Source version", b.sourceVersion || "–"],
      ["Created", fmtTime(b.createdAt)],
      ["Duration", fmtDur(sum(d.secondsInState)) + (terminal ? "" : " so far")],
    ];
    $("build-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", {}, v)]));

    const failure = $("build-failure");
    if (s === "failed") {
      failure.hidden = false;
      $("build-failure-text").replaceChildren(el("strong", { text: b.state.category }), ": ", b.state.message);
    } else if (s === "canceled" || s === "canceling") {
      failure.hidden = false;
      failure.querySelector("h3").textContent = "Why it was canceled";
      $("build-failure-text").textContent = b.state.reason;
    } else {
      failure.hidden = true;
    }
    $("build-cancel").hidden = terminal || s === "canceling";
    $("build-cancel").setAttribute("data-build", b.id);

    drawTimeline(d.timeline, d.secondsInState, terminal);
    await followLog(b.id, b.attempt, terminal, still);
  }

  /** One bar per state the build visited, placed on the build's own time axis. */
  function drawTimeline(history, secondsInState, terminal) {
    if (!history.length) {
      $("timeline").replaceChildren(el("li", { text: "No transitions recorded yet." }));
      return;
    }
    const t0 = Date.parse(history[0].at);
    const last = Date.parse(history[history.length - 1].at);
    // The server's count includes the time the current state has lasted so far.
    const total = Math.max((last - t0) / 1000, terminal ? 0 : sum(secondsInState), 0.001);
    const items = history.map((h, i) => {
      const start = (Date.parse(h.at) - t0) / 1000;
      const end = i + 1 < history.length ? (Date.parse(history[i + 1].at) - t0) / 1000 : (terminal ? start : total);
      const bar = el("span", { class: "bar " + stateKind(h.to), "aria-hidden": "true" });
      bar.style.left = (100 * start / total).toFixed(2) + "%";
      bar.style.width = (100 * (end - start) / total).toFixed(2) + "%";
      const ongoing = !terminal && i + 1 === history.length;
      return el("li", { "data-state": h.to },
        el("span", {}, el("strong", { text: h.to }), el("br"), el("small", { class: "muted", text: h.cause })),
        el("span", { class: "track", title: `${h.to} from ${fmtTime(h.at)}` }, bar),
        el("span", { class: "dur", text: TERMINAL.has(h.to) ? "ended" : fmtDur(end - start) + (ongoing ? "…" : "") }));
    });
    $("timeline").replaceChildren(...items);
  }

  async function followLog(id, attempt, terminal, still) {
    const pre = $("build-log");
    if (!log || log.id !== id || log.attempt !== attempt) {
      log = { id, attempt, offset: 0, done: false };
      pre.textContent = "";
    }
    if (log.done) return;
    const r = await api(`/api/builds/${enc(id)}/log?attempt=${attempt}&offset=${log.offset}`);
    if (!still() || log.id !== id) return;
    if (r.status === 404) {
      $("log-state").textContent = terminal ? "(none kept for this attempt)" : "(not started yet)";
      if (terminal) log.done = true;
      return;
    }
    if (!r.ok) throw new Error(`the log answered ${r.status}`);
    const text = await r.text();
    const next = Number(r.headers.get("x-kiln-log-offset"));
    log.offset = Number.isFinite(next) ? next : log.offset + new TextEncoder().encode(text).length;
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    if (text) pre.append(text);
    if (atBottom) pre.scrollTop = pre.scrollHeight;
    // A read that started after the build ended has everything.
    log.done = TERMINAL.has(r.headers.get("x-kiln-build-state") || "");
    $("log-state").textContent = log.done ? `(attempt ${attempt}, complete)` : `(attempt ${attempt}, following)`;
  }

  $("build-cancel").addEventListener("click", async (ev) => {
    const id = ev.currentTarget.getAttribute("data-build");
    try {
      const v = await getJson(`/api/builds/${enc(id)}/cancel`, { method: "POST" });
      say(`Cancel asked for build ${id} (now ${v.state}).`);
      refreshNow();
    } catch (e) {
      if (!(e instanceof Unauthorized)) say(`Could not cancel build ${id}: ${e.message}`, true);
    }
  });

  // ---- gallery and pipelines ------------------------------------------------------

  const PIPELINE_COLUMNS = ["Pipeline", "Source", "Triggers", "Next scheduled", "Automatic builds", "Warnings", "Action"];
  const VERSION_COLUMNS = ["Version", "Published", "Latest", "End of life", "Replicas", "Lineage", "Consumers", "Next retention"];

  function sourceText(src) {
    if (!src) return "–";
    if (src.publisher) return [src.publisher, src.offer, src.sku, src.version].filter(Boolean).join(":");
    return src.imageVersionId || src.imageId || src.type || "–";
  }

  function triggersText(p) {
    const out = [];
    const s = p.schedule;
    if (s && s.patchTuesday) {
      const pt = s.patchTuesday;
      const off = pt.offsetDays ? ` ${pt.offsetDays > 0 ? "+" : ""}${pt.offsetDays} d` : "";
      out.push(`Patch Tuesday${off} at ${pt.at} ${pt.timeZone}`);
    } else if (s && s.cron) {
      out.push(`cron ${s.cron}${s.timeZone ? " " + s.timeZone : ""}`);
    }
    if (s && s.blackouts && s.blackouts.length) out.push(`${s.blackouts.length} blackout window(s)`);
    const bi = p.baseImageTrigger;
    if (bi && bi.enabled) out.push(`base-image updates (debounce ${bi.debounceMinutes} min)`);
    out.push("requests");
    return out.join("; ");
  }

  async function nextFire(p) {
    if (!p.schedule) return "no schedule";
    try {
      const next = await getJson(`/api/pipelines/${enc(p.name)}/schedule?count=1`);
      if (!next.length) return "none";
      const o = next[0];
      return `${fmtTime(o.firesAt)} (cycle ${o.cycle}${o.deferred ? ", deferred by a blackout" : ""})`;
    } catch (e) {
      if (e instanceof Unauthorized) throw e;
      return "unknown: " + e.message;
    }
  }

  function pipelineRow(p, next) {
    const paused = p.automaticTriggers === "paused";
    const state = paused
      ? [badge("paused", "bad"), ` since ${fmtTime(p.breakerOpenSince)} after ${p.consecutiveFailures} failures`]
      : [badge("armed", "ok"), p.consecutiveFailures ? ` (${p.consecutiveFailures} recent failures)` : ""];
    const button = el("button", {
      type: "button", class: "build-now", "data-pipeline": p.name, "data-focus": "p:" + p.name,
      "aria-label": `Build ${p.name} now`, text: "Build now",
    });
    button.addEventListener("click", () => requestBuild(p.name, "", button));
    const warnings = (p.warnings || []).length
      ? el("ul", { class: "tags" }, p.warnings.map((w) => el("li", {}, badge("warning", "warn"), " ", w)))
      : "none";
    return row(PIPELINE_COLUMNS, [
      { node: [el("strong", { text: p.name }), p.description ? [el("br"), el("small", { class: "muted", text: p.description })] : null] },
      { node: breakable(sourceText(p.source), "mono") },
      triggersText(p),
      { node: next, cls: "num" },
      { node: state },
      { node: warnings },
      { node: button },
    ], { "data-pipeline": p.name });
  }

  function retentionCell(item, skipped) {
    if (skipped) return [badge("skip", "off"), " definition skipped: " + skipped];
    if (!item) return "not planned";
    const a = item.action;
    switch (a.kind) {
      case "keep": return [badge("keep", "ok"), " " + item.reason];
      case "deprecate": return [badge("deprecate", "warn"), ` (end of life ${fmtTime(a.endOfLife)}): ${item.reason}`];
      case "delete": return [badge("delete", "bad"), " " + item.reason];
      default: return [a.kind, " " + item.reason];
    }
  }

  function consumersCell(defId, v, isLatest, inUse) {
    if (!inUse) return "unknown (inventory unavailable)";
    const id = `${defId}/versions/${v.version}`.toLowerCase();
    const name = defId.split("/").pop().toLowerCase();
    const out = [];
    if (inUse.versions.includes(id)) out.push("VMs or scale sets use this version");
    if (isLatest && inUse.definitions.includes(defId.toLowerCase())) out.push("used through references to latest");
    if ((inUse.definition_names || []).includes(name)) out.push("maybe: a shared or community gallery reference to a definition of this name");
    // Who holds it, where the inventory named them (VMs, scale sets, instances).
    const held = (k) => (inUse.consumers || {})[k] || [];
    const who = [...new Set([...held(id), ...(isLatest ? held(defId.toLowerCase()) : [])])];
    if (who.length) out.push("held by " + who.join(", "));
    if (held(name).length) out.push("maybe held by " + held(name).join(", "));
    return out.length ? out.join("; ") : "none found";
  }

  // What a version changed, fetched when its disclosure is first opened:
  // since the previous version of the definition, or since its base.
  function changesItem(defId, v, previous) {
    const to = `${defId}/versions/${v.version}`;
    const from = previous ? `${defId}/versions/${previous.version}` : null;
    const body = el("div", { class: "changes", text: "loading…" });
    const details = el("details", { class: "changes" },
      el("summary", { text: from ? `what changed since ${previous.version}` : "what changed since the base" }), body);
    let loaded = false;
    details.addEventListener("toggle", async () => {
      if (!details.open || loaded) return;
      loaded = true;
      try {
        const q = `to=${enc(to)}` + (from ? `&from=${enc(from)}` : "");
        const d = await getJson("/api/evidence/diff?" + q);
        const lines = [
          ...d.added.map((c) => `+ ${c.name} ${c.to}`),
          ...d.removed.map((c) => `- ${c.name} ${c.from}`),
          ...d.upgraded.map((c) => `↑ ${c.name} ${c.from} → ${c.to}`),
          ...d.downgraded.map((c) => `↓ ${c.name} ${c.from} → ${c.to}`),
        ];
        body.replaceChildren(lines.length
          ? el("ul", { class: "mono" }, lines.map((t) => el("li", { text: t })))
          : el("p", { text: "no package added, removed or changed" }));
      } catch (e) {
        loaded = false;
        body.replaceChildren(el("p", { class: "failure", text: "cannot read the diff: " + e.message }));
      }
    });
    return el("li", {}, details);
  }

  function evidenceItem(ev) {
    if (!ev) return null;
    const parts = [`${ev.packages} packages`];
    if (ev.gate) {
      parts.push(ev.gate.verdict === "pass" ? `gate (${ev.gate.mode}) passes`
        : ev.gate.verdict === "fail" ? `gate (${ev.gate.mode}) fails: ${ev.gate.blocking} blocking`
        : `gate (${ev.gate.mode}) ${ev.gate.verdict}`);
    }
    parts.push(ev.signed ? "provenance signed" : "provenance not signed");
    return el("li", { class: "evidence", text: "evidence: " + parts.join(" · ") });
  }

  function lineageCell(tags, evidence, changes) {
    const items = [];
    const t = tags || {};
    const ev = evidenceItem(evidence);
    if (ev) items.push(ev);
    if (ev && changes) items.push(changes);
    if (t["kiln.build"]) items.push(el("li", {}, "build ", el("a", { href: "#/builds/" + enc(t["kiln.build"]), class: "mono", text: t["kiln.build"] })));
    if (t["kiln.source"]) items.push(el("li", {}, "from ", breakable(t["kiln.source"], "mono")));
    if (t["kiln.pipeline"]) items.push(el("li", { text: "pipeline " + t["kiln.pipeline"] }));
    if (t["kiln.sourceVersion"]) items.push(el("li", { text: "source version " + t["kiln.sourceVersion"] }));
    if (t["kiln.attempt"]) items.push(el("li", { text: "attempt " + t["kiln.attempt"] }));
    if (t["kiln.templateHash"]) items.push(el("li", {}, "template ", el("span", { class: "mono", text: shorten(t["kiln.templateHash"], 13) })));
    const shown = ["kiln.build", "kiln.source", "kiln.sourceVersion", "kiln.pipeline", "kiln.attempt", "kiln.templateHash", "kiln.version", "kiln.network", "kiln.sbom.sha256"];
    if (t["kiln.sbom.sha256"]) items.push(el("li", {}, "SBOM ", el("span", { class: "mono", text: shorten(t["kiln.sbom.sha256"], 13) })));
    for (const [k, v] of Object.entries(t)) {
      if (!shown.includes(k)) items.push(el("li", {}, el("span", { class: "mono", text: `${k}=${shorten(v, 40)}` })));
    }
    return items.length ? el("ul", { class: "tags" }, items) : "no lineage tags";
  }

  function definitionBlock(def, plan, inUse, index) {
    const versions = [...def.versions].reverse(); // newest first
    const latest = versions.find((v) => !v.excludeFromLatest);
    const items = new Map(((plan && plan.items) || []).map((i) => [String(i.version), i]));
    const skipped = plan ? plan.skipped : null;
    const captionId = "def-caption-" + index;
    const rows = versions.map((v, i) => row(VERSION_COLUMNS, [
      { node: v.version, cls: "num" },
      { node: fmtTime(v.published), cls: "num" },
      { node: v === latest ? badge("latest", "ok") : v.excludeFromLatest ? "excluded" : "–" },
      { node: fmtTime(v.endOfLife), cls: "num" },
      (v.replication || []).map((r) => `${r.region} ×${r.replicaCount} ${r.state}`).join(", ") || "–",
      { node: lineageCell(v.tags, v.evidence, v.evidence && changesItem(def.definition, v, versions.slice(i + 1).find((p) => p.evidence))) },
      consumersCell(def.definition, v, v === latest, inUse),
      { node: retentionCell(items.get(String(v.version)), skipped) },
    ], { "data-version": v.version }));
    if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: VERSION_COLUMNS.length, text: "No versions published yet." })));
    const name = def.definition.split("/").pop();
    return el("div", { class: "definition", "data-definition": def.definition },
      el("h3", { text: name }),
      el("p", { class: "muted" }, breakable(def.definition, "mono")),
      el("div", { class: "scroll", role: "region", "aria-labelledby": captionId, tabindex: "0" },
        el("table", { class: "cards" },
          el("caption", { id: captionId, text: `${name}: versions published by pipeline ${def.pipeline}` }),
          el("thead", {}, el("tr", {}, VERSION_COLUMNS.map((c) => el("th", { scope: "col", text: c })))),
          el("tbody", {}, rows))));
  }

  let gallerySignature = "";

  async function refreshGallery(still) {
    const soft = (p) => p.catch((e) => { if (e instanceof Unauthorized) throw e; return { failed: e.message }; });
    const [pipelines, gallery, plans, inUse] = await Promise.all([
      getJson("/api/pipelines"),
      getJson("/api/gallery"),
      soft(getJson("/api/retention/plan")),
      soft(getJson("/api/ui/in-use")),
    ]);
    const nexts = await Promise.all(pipelines.map(nextFire));
    if (!still()) return;
    const signature = JSON.stringify([pipelines, gallery, plans, inUse, nexts]);
    if (signature === gallerySignature) return;
    gallerySignature = signature;
    fillPipelineChoice(pipelines.map((p) => p.name));
    const pipelineRows = pipelines.map((p, i) => pipelineRow(p, nexts[i]));
    if (!pipelineRows.length) pipelineRows.push(el("tr", {}, el("td", { colspan: PIPELINE_COLUMNS.length, text: "No pipelines deployed." })));
    replaceKeepingFocus($("pipelines-body"), pipelineRows);
    const planOf = new Map(Array.isArray(plans) ? plans.map((p) => [p.definitionId.toLowerCase(), p]) : []);
    const blocks = [];
    if (!Array.isArray(plans)) blocks.push(el("p", { class: "failure", text: "The retention plan is unavailable: " + plans.failed }));
    gallery.forEach((def, i) => blocks.push(definitionBlock(def, planOf.get(def.definition.toLowerCase()), inUse.failed ? null : inUse, i)));
    replaceKeepingFocus($("definitions"), blocks);
  }

  // ---- views, routing and polling ----------------------------------------------------

  let view = null; // { name, id }
  let generation = 0;
  let timer = null;
  let running = false;
  let pending = false;

  function parseHash() {
    const m = location.hash.match(/^#\/builds\/(.+)$/);
    if (m) return { name: "build", id: decodeURIComponent(m[1]) };
    if (location.hash === "#/gallery") return { name: "gallery" };
    return { name: "builds" };
  }

  function route(initial) {
    view = parseHash();
    generation += 1;
    for (const n of ["builds", "build", "gallery"]) $("view-" + n).hidden = n !== view.name;
    $("nav-builds").toggleAttribute("aria-current", false);
    $("nav-gallery").toggleAttribute("aria-current", false);
    const current = view.name === "gallery" ? "nav-gallery" : "nav-builds";
    $(current).setAttribute("aria-current", "page");
    document.title = view.name === "gallery" ? "Gallery & pipelines — kiln" : view.name === "build" ? `Build ${view.id} — kiln` : "Builds — kiln";
    if (view.name === "build") {
      $("build-heading").textContent = `Build ${view.id}`;
      $("build-facts").replaceChildren();
      $("timeline").replaceChildren();
      $("build-failure").hidden = true;
    }
    buildsSignature = "";
    gallerySignature = "";
    if (!initial) {
      // Move the reading position to the new view, as a page load would.
      const h = $("view-" + view.name).querySelector("h2");
      h.setAttribute("tabindex", "-1");
      h.focus();
    }
    refreshNow();
  }

  function refreshNow() {
    clearTimeout(timer);
    tick();
  }

  async function tick() {
    if (running) { pending = true; return; }
    running = true;
    const gen = generation;
    const still = () => gen === generation;
    let wait = view.name === "gallery" ? GALLERY_POLL_MS : BUILDS_POLL_MS;
    try {
      if (view.name === "builds") await refreshBuilds(still);
      else if (view.name === "build") await refreshBuild(view.id, still);
      else await refreshGallery(still);
      if (still()) fresh(`updated ${new Date().toISOString().slice(11, 19)} UTC`);
    } catch (e) {
      if (e instanceof Unauthorized) { fresh("waiting for an API key"); wait = null; }
      else fresh("cannot read the API: " + e.message);
    } finally {
      running = false;
    }
    if (pending) { pending = false; return tick(); }
    if (wait !== null) later(wait);
  }

  function later(ms) {
    clearTimeout(timer);
    if (document.hidden) { fresh("paused while this tab is hidden"); return; }
    timer = setTimeout(tick, ms);
  }

  function fresh(text) { $("freshness").textContent = text; }

  document.addEventListener("visibilitychange", () => {
    if (document.hidden) { clearTimeout(timer); fresh("paused while this tab is hidden"); }
    else refreshNow();
  });
  window.addEventListener("hashchange", () => route(false));
  route(true);
})();
