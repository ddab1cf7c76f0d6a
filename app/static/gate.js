// The run page's promotion gate card, the adapter's lineage and the side-by-side samples.
// app.js calls Gate.show(run) once a run is completed, Gate.clear() when a run page opens and
// Gate.title(promotion) for the adapters table. Every value from the API is set as text
// (textContent, setAttribute), never parsed as HTML: samples come from debate traces.
"use strict";

const Gate = (() => {
  const byId = (id) => document.getElementById(id);
  const CRITERIA = ["loss", "generation", "preference", "drift"]; // the gate's order
  const state = { runId: null, fetched: null, adapter: null };

  function node(tag, attrs = {}, ...children) {
    const element = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (key === "class") element.className = value;
      else element.setAttribute(key, value);
    }
    for (const child of children) element.append(child instanceof Node ? child : String(child ?? ""));
    return element;
  }

  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  const loss = (v) => (isNum(v) ? v.toFixed(4) : "–");
  const rate = (v) => (isNum(v) ? v.toFixed(2) : "–");
  const bound = (v) => (isNum(v) ? String(Number(v.toPrecision(3))) : "–"); // 1.0512 -> 1.05
  const count = (v) => (Number.isInteger(v) ? String(v) : "–");
  const hasInterval = (ci) => Array.isArray(ci) && ci.length === 2 && ci.every(isNum);
  const percent = (c) => `${Number((c * 100).toFixed(1))}%`;

  // "Δ loss 1.2040 [1.05, 1.34] at 95%": what is there of it, or "" when nothing is
  function delta(improvement, ci, confidence) {
    if (!isNum(improvement) && !hasInterval(ci)) return "";
    let text = `Δ loss ${loss(improvement)}`;
    if (hasInterval(ci)) text += ` [${bound(ci[0])}, ${bound(ci[1])}]`;
    if (hasInterval(ci) && isNum(confidence)) text += ` at ${percent(confidence)}`;
    return text;
  }

  function title(promotion) {
    if (!promotion || typeof promotion !== "object") return "";
    const line = delta(promotion.improvement, promotion.improvementCi, promotion.confidence);
    return [promotion.reason || "", line].filter(Boolean).join("\n");
  }

  // --- the gate card ---------------------------------------------------------------------

  function summary(p) {
    const parts = [];
    const line = delta(p.improvement, p.improvementCi, p.confidence);
    if (line) parts.push(line);
    if (Number.isInteger(p.examples)) parts.push(`${p.examples} examples scored`);
    if (Number.isInteger(p.examplesLeftOut)) parts.push(`${p.examplesLeftOut} left out`);
    if (p.reference) parts.push(`against ${p.reference}`);
    if (isNum(p.referenceValLoss) && isNum(p.candidateValLoss)) {
      parts.push(`val loss ${loss(p.referenceValLoss)} → ${loss(p.candidateValLoss)}`);
    }
    if (Number.isInteger(p.resamples)) parts.push(`${p.resamples} resamples`);
    return parts.join(" · ");
  }

  // One criterion's figures, from the fields it has (the gate_shape contract); others as-is.
  function figures(name, c) {
    const parts = [];
    if (name === "loss") {
      const line = delta(c.improvement, c.improvementCi, null);
      if (line) parts.push(line.replace("Δ loss ", "Δ "));
      if (isNum(c.minDelta)) parts.push(`min Δ ${c.minDelta}`);
    } else if (name === "generation") {
      if (isNum(c.reference) || isNum(c.candidate)) {
        parts.push(`${c.metric || "score"} ${rate(c.reference)} → ${rate(c.candidate)}`);
      }
      if (isNum(c.drop)) parts.push(`drop ${rate(c.drop)}${isNum(c.maxDrop) ? ` (max ${c.maxDrop})` : ""}`);
      if (Number.isInteger(c.examples)) parts.push(`${c.examples} examples`);
    } else if (name === "preference") {
      if (isNum(c.reference) || isNum(c.candidate)) {
        parts.push(`accuracy ${rate(c.reference)} → ${rate(c.candidate)}`);
      }
      if (Number.isInteger(c.pairs)) parts.push(`${c.pairs} pairs`);
    } else if (name === "drift") {
      if (isNum(c.drift)) parts.push(`drift ${loss(c.drift)}${isNum(c.maxDrift) ? ` (max ${c.maxDrift})` : ""}`);
      if (isNum(c.baseLoss) || isNum(c.candidateLoss)) {
        parts.push(`probe loss ${loss(c.baseLoss)} → ${loss(c.candidateLoss)}`);
      }
      if (Number.isInteger(c.prompts)) parts.push(`${c.prompts} prompts`);
    } else {
      for (const [key, value] of Object.entries(c)) {
        if (key !== "verdict" && key !== "why" && value !== null && typeof value !== "object") {
          parts.push(`${key} ${value}`);
        }
      }
    }
    return parts.join(" · ");
  }

  function verdictBadge(verdict) {
    const text = typeof verdict === "string" && verdict ? verdict : "not measured";
    const kind = text.replace(/[^a-z]+/gi, "-").toLowerCase();
    return node("span", { class: `verdict ${kind}`, "data-verdict": text }, text);
  }

  function criteriaRows(p) {
    const criteria = p.criteria && typeof p.criteria === "object" ? p.criteria : {};
    const extra = Object.keys(criteria).filter((n) => !CRITERIA.includes(n));
    const names = [...CRITERIA.filter((n) => n in criteria), ...extra];
    return names
      .filter((name) => criteria[name] && typeof criteria[name] === "object")
      .map((name) => {
        const c = criteria[name];
        return node(
          "tr",
          { "data-criterion": name, class: p.decidedBy === name ? "decided" : "" },
          node("td", {}, name),
          node("td", {}, verdictBadge(c.verdict)),
          node("td", { class: "figures" }, figures(name, c)),
          node("td", { class: "why" }, c.why || ""),
        );
      });
  }

  function driftLine(p) {
    const drift = p.criteria && p.criteria.drift;
    if (!drift || typeof drift !== "object") return "";
    if (!isNum(drift.drift)) return `Drift: ${drift.verdict || "not measured"}${drift.why ? ` (${drift.why})` : ""}`;
    let text = `Drift ${loss(drift.drift)} nats/token from the base model`;
    if (isNum(drift.maxDrift)) text += ` (max ${drift.maxDrift})`;
    if (Number.isInteger(drift.prompts)) text += ` on ${drift.prompts} general prompts`;
    if (isNum(drift.baseLoss) && isNum(drift.candidateLoss)) {
      text += `: probe loss ${loss(drift.baseLoss)} → ${loss(drift.candidateLoss)}`;
    }
    return text;
  }

  function renderGate(p) {
    const card = byId("gate");
    if (!p || typeof p !== "object") {
      card.hidden = true;
      return;
    }
    const decision = typeof p.decision === "string" && p.decision ? p.decision : "unknown";
    const badge = byId("gate-decision");
    badge.textContent = decision;
    badge.className = `badge decision ${decision.replace(/[^a-z]+/gi, "-").toLowerCase()}`;
    badge.dataset.decision = decision;
    byId("gate-reason").textContent = p.reason || "";
    const line = summary(p);
    byId("gate-summary").textContent = line;
    byId("gate-summary").hidden = !line;
    const rows = criteriaRows(p);
    byId("gate-criteria").tBodies[0].replaceChildren(...rows);
    byId("gate-criteria").hidden = rows.length === 0;
    const drift = driftLine(p);
    byId("gate-drift").textContent = drift;
    byId("gate-drift").hidden = !drift;
    card.hidden = false;
  }

  // --- lineage and samples ---------------------------------------------------------------

  function renderLineage(lineage) {
    const line = byId("run-lineage");
    const entries = Array.isArray(lineage) ? lineage.filter((e) => e && typeof e.id === "string") : [];
    if (!entries.length) {
      line.hidden = true;
      line.replaceChildren();
      return;
    }
    const links = entries.flatMap((entry, i) => {
      const item = entry.missing
        ? node("span", { class: "missing", "data-lineage-id": entry.id }, `${entry.id} (deleted)`)
        : node(
            "a",
            { href: `#/runs/${encodeURIComponent(entry.id)}`, "data-lineage-id": entry.id, title: entry.createdAt || "" },
            entry.id,
          );
      return i ? [" ← ", item] : [item];
    });
    line.replaceChildren("continues ", ...links);
    line.hidden = false;
  }

  function score(s) {
    if (!s || typeof s !== "object") return null;
    const hover = Object.entries(s).map(([k, v]) => `${k}: ${v}`).join(", ");
    if (typeof s.exactMatch === "boolean") {
      const text = s.exactMatch ? "✓ exact match" : "✗ no exact match";
      return node("span", { class: `score ${s.exactMatch ? "hit" : "miss"}`, title: hover }, text);
    }
    if (isNum(s.rougeL)) return node("span", { class: "score", title: hover }, `ROUGE-L ${rate(s.rougeL)}`);
    return null;
  }

  function answer(text, s) {
    const cell = node("td", { class: "answer" }, node("div", { class: "text" }, text ?? ""));
    const mark = score(s);
    if (mark) cell.append(mark);
    return cell;
  }

  function renderSamples(samples) {
    const card = byId("samples-card");
    const rows = Array.isArray(samples) ? samples.filter((r) => r && typeof r === "object") : [];
    if (!rows.length) {
      card.hidden = true;
      return;
    }
    const withActive = rows.some((r) => r.active !== null && r.active !== undefined);
    const heads = ["Question", "Reference", "Base model", "Adapter", ...(withActive ? ["Active adapter"] : [])];
    const table = byId("samples");
    table.tHead.replaceChildren(node("tr", {}, ...heads.map((h) => node("th", {}, h))));
    table.tBodies[0].replaceChildren(
      ...rows.map((r, i) =>
        node(
          "tr",
          { "data-sample": String(i) },
          node("td", { class: "answer" }, node("div", { class: "text" }, r.instruction ?? "")),
          node("td", { class: "answer" }, node("div", { class: "text" }, r.reference ?? "")),
          answer(r.base, r.baseScore),
          answer(r.adapter, r.adapterScore),
          ...(withActive ? [answer(r.active ?? "–", r.activeScore)] : []),
        ),
      ),
    );
    card.hidden = false;
  }

  // --- what app.js calls -------------------------------------------------------------------

  function clear() {
    Object.assign(state, { runId: null, fetched: null, adapter: null });
    byId("gate").hidden = true;
    byId("samples-card").hidden = true;
    byId("run-lineage").hidden = true;
  }

  // Called on every state frame of the run page: the adapter is fetched once per run.
  async function show(run) {
    if (state.runId !== run.id) Object.assign(state, { runId: run.id, fetched: null, adapter: null });
    renderGate(run.promotion || (state.adapter && state.adapter.promotion));
    if (run.status !== "completed" || !run.loraPath || state.fetched === run.id) return;
    state.fetched = run.id; // the adapter id is the run id of a published adapter
    let response;
    try {
      response = await api("GET", `/api/adapters/${encodeURIComponent(run.id)}`);
    } catch {
      state.fetched = null; // the next frame tries again
      return;
    }
    const { status, data } = response;
    if (state.runId !== run.id || status !== 200 || !data || typeof data !== "object") return;
    state.adapter = data;
    if (!run.promotion) renderGate(data.promotion);
    renderLineage(data.lineage);
    renderSamples(data.samples);
  }

  return { show, clear, title };
})();
