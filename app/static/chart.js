// A small loss chart drawn on <canvas>: training loss as a line, eval loss as a line with
// dots, steps on x. No library: the dashboard must work offline with no build step.
"use strict";

class LossChart {
  constructor(canvas) {
    this.canvas = canvas;
    this.train = new Map(); // step -> loss
    this.evals = new Map(); // step -> eval loss
    this.totalSteps = 0;
    this.pending = false;
    window.addEventListener("resize", () => this.draw());
  }

  clear() {
    this.train.clear();
    this.evals.clear();
    this.totalSteps = 0;
    this.draw();
  }

  // Points are keyed by step: the same point from history and from the live feed counts once.
  add(kind, step, value, totalSteps) {
    if (typeof step !== "number" || typeof value !== "number" || !isFinite(value)) return;
    (kind === "eval" ? this.evals : this.train).set(step, value);
    if (totalSteps) this.totalSteps = Math.max(this.totalSteps, totalSteps);
    this.schedule();
  }

  get size() {
    return this.train.size + this.evals.size;
  }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.draw();
    });
  }

  draw() {
    const canvas = this.canvas;
    canvas.dataset.points = String(this.size);
    canvas.dataset.trainPoints = String(this.train.size);
    canvas.dataset.evalPoints = String(this.evals.size);
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 600;
    const height = canvas.clientHeight || 280;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const pad = { left: 56, right: 16, top: 16, bottom: 36 };
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    const trainPts = [...this.train.entries()].sort((a, b) => a[0] - b[0]);
    const evalPts = [...this.evals.entries()].sort((a, b) => a[0] - b[0]);
    const all = trainPts.concat(evalPts);
    ctx.font = "12px system-ui, sans-serif";
    ctx.fillStyle = "#6b7280";
    if (all.length === 0) {
      ctx.fillText("waiting for the first training step…", pad.left, pad.top + plotH / 2);
      return;
    }
    // x spans what has been seen plus some headroom (not the whole run: a 3000-step run
    // would squash its first minutes into a sliver); the progress bar shows the whole.
    const seen = Math.max(...all.map((p) => p[0]), 1);
    const headroom = Math.max(10, Math.ceil(seen * 1.2));
    const maxStep = this.totalSteps ? Math.min(this.totalSteps, headroom) : headroom;
    let lo = Math.min(...all.map((p) => p[1]));
    let hi = Math.max(...all.map((p) => p[1]));
    if (hi - lo < 1e-9) { lo -= 0.5; hi += 0.5; }
    const margin = (hi - lo) * 0.08;
    lo = Math.max(0, lo - margin);
    hi += margin;
    const x = (step) => pad.left + (step / maxStep) * plotW;
    const y = (value) => pad.top + (1 - (value - lo) / (hi - lo)) * plotH;

    // grid and ticks
    ctx.strokeStyle = "#e5e7eb";
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let i = 0; i <= 4; i++) {
      const value = lo + ((hi - lo) * i) / 4;
      const py = y(value);
      ctx.beginPath(); ctx.moveTo(pad.left, py); ctx.lineTo(pad.left + plotW, py); ctx.stroke();
      ctx.fillText(value.toFixed(3), pad.left - 6, py);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const ticks = new Set();
    for (let i = 0; i <= 5; i++) ticks.add(Math.round((maxStep * i) / 5));
    for (const step of ticks) ctx.fillText(String(step), x(step), pad.top + plotH + 6);
    ctx.fillText("step", pad.left + plotW / 2, pad.top + plotH + 20);

    this.series(ctx, trainPts, x, y, "#2563eb", false);
    this.series(ctx, evalPts, x, y, "#ea580c", true);

    // legend
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    const legend = [["train loss", "#2563eb"], ["eval loss", "#ea580c"]];
    legend.forEach(([label, color], i) => {
      const lx = pad.left + plotW - 190 + i * 100;
      ctx.fillStyle = color;
      ctx.fillRect(lx, pad.top + 2, 14, 3);
      ctx.fillStyle = "#374151";
      ctx.fillText(label, lx + 18, pad.top + 4);
    });
  }

  series(ctx, points, x, y, color, dots) {
    if (points.length === 0) return;
    ctx.strokeStyle = color;
    ctx.fillStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    points.forEach(([step, value], i) => {
      if (i === 0) ctx.moveTo(x(step), y(value)); else ctx.lineTo(x(step), y(value));
    });
    ctx.stroke();
    if (dots || points.length === 1) {
      for (const [step, value] of points) {
        ctx.beginPath(); ctx.arc(x(step), y(value), 3.5, 0, Math.PI * 2); ctx.fill();
      }
    }
  }
}

window.LossChart = LossChart;
