// A small loss chart drawn on <canvas>: one line per series, steps on x. Losses share the
// left axis; the DPO reward margin is another quantity (it grows while the loss falls, and
// can be negative), so it gets its own axis on the right. A dashed line marks where the DPO
// stage begins. No library: the dashboard must work offline with no build step.
"use strict";

// The series, in drawing and legend order. `stage` says which training stage feeds it (the
// DPO boundary is the first step any "dpo" series has); `axis` which y axis it is read on.
const SERIES = [
  { kind: "train", label: "train loss", color: "#2563eb", stage: "sft", axis: "left" },
  { kind: "eval", label: "eval loss", color: "#ea580c", stage: "sft", axis: "left", dots: true },
  { kind: "dpo", label: "DPO loss", color: "#7c3aed", stage: "dpo", axis: "left" },
  { kind: "dpo_eval", label: "DPO eval loss", color: "#db2777", stage: "dpo", axis: "left", dots: true },
  { kind: "margin", label: "reward margin", color: "#059669", stage: "dpo", axis: "right", dash: [5, 3] },
];
const BOUNDARY_COLOR = "#6b7280";

class LossChart {
  constructor(canvas) {
    this.canvas = canvas;
    this.points = new Map(SERIES.map((s) => [s.kind, new Map()])); // kind -> (step -> value)
    this.totalSteps = 0;
    this.pending = false;
    window.addEventListener("resize", () => this.draw());
  }

  clear() {
    this.points.forEach((series) => series.clear());
    this.totalSteps = 0;
    this.draw();
  }

  // Points are keyed by step: the same point from history and from the live feed counts once.
  add(kind, step, value, totalSteps) {
    const series = this.points.get(kind);
    if (!series || typeof step !== "number" || typeof value !== "number" || !isFinite(value)) return;
    series.set(step, value);
    if (totalSteps) this.totalSteps = Math.max(this.totalSteps, totalSteps);
    this.schedule();
  }

  get size() {
    let n = 0;
    this.points.forEach((series) => (n += series.size));
    return n;
  }

  // The first step of the DPO stage, or null before (or without) one.
  get boundary() {
    const steps = SERIES.filter((s) => s.stage === "dpo").flatMap((s) => [...this.points.get(s.kind).keys()]);
    return steps.length ? Math.min(...steps) : null;
  }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.draw();
    });
  }

  // What is drawn, on the canvas's data attributes, so a test (or a person in devtools) can
  // read the chart without decoding pixels: `data-series` maps each non-empty series' label
  // to its point count, `data-stage-boundary` is the DPO stage's first step.
  describe(drawn) {
    const data = this.canvas.dataset;
    data.points = String(this.size);
    data.trainPoints = String(this.points.get("train").size);
    data.evalPoints = String(this.points.get("eval").size);
    data.series = JSON.stringify(Object.fromEntries(drawn.map((s) => [s.label, s.points.length])));
    if (this.boundary === null) delete data.stageBoundary;
    else data.stageBoundary = String(this.boundary);
  }

  draw() {
    const drawn = SERIES.map((s) => ({ ...s, points: [...this.points.get(s.kind).entries()].sort((a, b) => a[0] - b[0]) }))
      .filter((s) => s.points.length > 0);
    this.describe(drawn);
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 600;
    const height = canvas.clientHeight || 280;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const hasRight = drawn.some((s) => s.axis === "right");
    // the legend sits above the plot (top padding), the right axis' labels need room too
    const pad = { left: 56, right: hasRight ? 56 : 16, top: 30, bottom: 36 };
    const plot = { left: pad.left, top: pad.top, w: width - pad.left - pad.right, h: height - pad.top - pad.bottom };
    ctx.font = "12px system-ui, sans-serif";
    ctx.fillStyle = "#6b7280";
    if (drawn.length === 0) {
      ctx.fillText("waiting for the first training step…", plot.left, plot.top + plot.h / 2);
      return;
    }
    const all = drawn.flatMap((s) => s.points);
    // x spans what has been seen plus some headroom (not the whole run: a 3000-step run
    // would squash its first minutes into a sliver); the progress bar shows the whole.
    const seen = Math.max(...all.map((p) => p[0]), 1);
    const headroom = Math.max(10, Math.ceil(seen * 1.2));
    const maxStep = this.totalSteps ? Math.min(this.totalSteps, headroom) : headroom;
    const x = (step) => plot.left + (step / maxStep) * plot.w;
    const left = axisRange(drawn.filter((s) => s.axis === "left"), plot, true);
    const right = axisRange(drawn.filter((s) => s.axis === "right"), plot, false);

    this.grid(ctx, plot, maxStep, x, left);
    if (right) this.rightTicks(ctx, plot, right);
    const boundary = this.boundary;
    if (boundary !== null) this.marker(ctx, plot, x(boundary), "DPO");
    for (const s of drawn) this.series(ctx, s, x, s.axis === "right" ? right.y : left.y);
    this.legend(ctx, drawn, width - pad.right, pad.top);
  }

  // Horizontal grid with the left axis' ticks (when a loss is drawn), and the step ticks.
  grid(ctx, plot, maxStep, x, left) {
    ctx.strokeStyle = "#e5e7eb";
    ctx.lineWidth = 1;
    ctx.fillStyle = "#6b7280";
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let i = 0; i <= 4; i++) {
      const py = plot.top + (plot.h * i) / 4;
      ctx.beginPath(); ctx.moveTo(plot.left, py); ctx.lineTo(plot.left + plot.w, py); ctx.stroke();
      if (left) ctx.fillText(left.value(py).toFixed(3), plot.left - 6, py);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const ticks = new Set();
    for (let i = 0; i <= 5; i++) ticks.add(Math.round((maxStep * i) / 5));
    for (const step of ticks) ctx.fillText(String(step), x(step), plot.top + plot.h + 6);
    ctx.fillText("step", plot.left + plot.w / 2, plot.top + plot.h + 20);
  }

  // The reward margin's scale, in its colour so it reads as that series' axis.
  rightTicks(ctx, plot, right) {
    ctx.fillStyle = SERIES.find((s) => s.axis === "right").color;
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    for (let i = 0; i <= 4; i++) {
      const py = plot.top + (plot.h * i) / 4;
      ctx.fillText(right.value(py).toFixed(2), plot.left + plot.w + 6, py);
    }
  }

  // A dashed vertical line where a stage begins, its name at the top.
  marker(ctx, plot, px, label) {
    ctx.save();
    ctx.strokeStyle = BOUNDARY_COLOR;
    ctx.setLineDash([4, 4]);
    ctx.lineWidth = 1;
    ctx.beginPath(); ctx.moveTo(px, plot.top); ctx.lineTo(px, plot.top + plot.h); ctx.stroke();
    ctx.restore();
    ctx.fillStyle = BOUNDARY_COLOR;
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    ctx.fillText(label, px + 4, plot.top + 2);
  }

  series(ctx, s, x, y) {
    ctx.save();
    ctx.strokeStyle = s.color;
    ctx.fillStyle = s.color;
    ctx.lineWidth = 2;
    if (s.dash) ctx.setLineDash(s.dash);
    ctx.beginPath();
    s.points.forEach(([step, value], i) => {
      if (i === 0) ctx.moveTo(x(step), y(value)); else ctx.lineTo(x(step), y(value));
    });
    ctx.stroke();
    if (s.dots || s.points.length === 1) {
      for (const [step, value] of s.points) {
        ctx.beginPath(); ctx.arc(x(step), y(value), 3.5, 0, Math.PI * 2); ctx.fill();
      }
    }
    ctx.restore();
  }

  // One row above the plot, right-aligned, only the series that have points.
  legend(ctx, drawn, right, top) {
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    let lx = right;
    for (const s of [...drawn].reverse()) {
      lx -= ctx.measureText(s.label).width + 18 + 14;
      ctx.fillStyle = s.color;
      ctx.fillRect(lx, top - 17, 14, 3);
      ctx.fillStyle = "#374151";
      ctx.fillText(s.label, lx + 18, top - 15);
    }
  }
}

// A y axis fitted to `series`' values (null when there are none): `y` maps a value to a
// pixel, `value` back. Losses are never below 0, so their axis stops there; the margin's
// axis always shows 0, where chosen and rejected answers score the same.
function axisRange(series, plot, nonNegative) {
  const values = series.flatMap((s) => s.points.map((p) => p[1]));
  if (values.length === 0) return null;
  let lo = Math.min(...values), hi = Math.max(...values);
  if (!nonNegative) { lo = Math.min(lo, 0); hi = Math.max(hi, 0); }
  if (hi - lo < 1e-9) { lo -= 0.5; hi += 0.5; }
  const margin = (hi - lo) * 0.08;
  lo = nonNegative ? Math.max(0, lo - margin) : lo - margin;
  hi += margin;
  return {
    y: (value) => plot.top + (1 - (value - lo) / (hi - lo)) * plot.h,
    value: (py) => lo + (1 - (py - plot.top) / plot.h) * (hi - lo),
  };
}

window.LossChart = LossChart;
