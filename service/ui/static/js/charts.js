// Small SVG charts drawn from data: vertical (optionally stacked) bars over categories, and horizontal bars.
// Every bar carries a <title> (hover) and data-label / data-value; the whole chart is one labelled image, and
// the pages show the same numbers as a table for screen readers.

import { h, svg } from "./dom.js";

/** The width a chart has inside a card of the page, so its text is drawn at its real size (not scaled). */
function fitWidth() {
  const main = document.getElementById("main");
  return Math.round(Math.max(480, Math.min(1240, (main ? main.clientWidth : 800) - 90)));
}

/** 0, a round step, ... covering max: 1, 2 or 5 times a power of ten. */
function ticks(max, count = 4) {
  if (!(max > 0)) return [0, 1];
  const raw = max / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
  const out = [];
  for (let v = 0; v < max + step * 0.999; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

/**
 * barChart({label, categories: ["2026-11-01", ...], series: [{name, className, values: [...]}], format, tickFormat})
 * Series are stacked in order.
 */
export function barChart({
  label, categories, series, format, tickFormat = format, categoryFormat = (c) => c, width = fitWidth(),
}) {
  const height = 240;
  const pad = { top: 12, right: 12, bottom: 34, left: 64 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const totals = categories.map((_, i) => series.reduce((sum, s) => sum + (s.values[i] || 0), 0));
  const yTicks = ticks(Math.max(0, ...totals));
  const top = yTicks[yTicks.length - 1];
  const y = (v) => pad.top + plotH - (plotH * v) / top;
  const slot = plotW / Math.max(1, categories.length);
  const barW = Math.max(2, Math.min(48, slot * 0.7));

  const chart = svg("svg", {
    class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label,
    preserveAspectRatio: "xMidYMid meet",
  });
  for (const t of yTicks) {
    chart.append(
      svg("line", { class: "grid", x1: pad.left, x2: width - pad.right, y1: y(t), y2: y(t) }),
      svg("text", { class: "axis", x: pad.left - 8, y: y(t) + 4, "text-anchor": "end" }, tickFormat(t)),
    );
  }
  // Label only as many categories as fit, so the dates stay readable.
  const every = Math.ceil(categories.length / Math.max(2, Math.floor(plotW / 64)));
  categories.forEach((category, i) => {
    const x = pad.left + slot * i + (slot - barW) / 2;
    let base = 0;
    for (const s of series) {
      const value = s.values[i] || 0;
      if (value > 0) {
        const text = `${categoryFormat(category)} · ${s.name}: ${format(value)}`;
        chart.append(svg("rect", {
          class: `bar ${s.className || ""}`, x, y: y(base + value), width: barW,
          height: Math.max(1, y(base) - y(base + value)), "data-label": category, "data-series": s.name,
          "data-value": value,
        }, svg("title", {}, text)));
      }
      base += value;
    }
    if (i % every === 0) {
      chart.append(svg("text", { class: "axis", x: x + barW / 2, y: height - pad.bottom + 18, "text-anchor": "middle" },
        categoryFormat(category)));
    }
  });
  chart.append(svg("line", { class: "baseline", x1: pad.left, x2: width - pad.right, y1: y(0), y2: y(0) }));
  return h("div", { class: "chart-box" }, chart, series.length > 1 ? legend(series) : null);
}

/** hbarChart({label, rows: [{label, value}], format}): one bar per row, longest first. */
export function hbarChart({ label, rows, format, width = fitWidth() }) {
  const sorted = [...rows].sort((a, b) => b.value - a.value);
  const rowH = 30;
  const labelW = 200;
  const valueW = 110;
  const height = Math.max(1, sorted.length) * rowH + 8;
  const max = Math.max(0, ...sorted.map((r) => r.value)) || 1;
  const chart = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label });
  sorted.forEach((row, i) => {
    const y = 4 + i * rowH;
    const w = Math.max(row.value > 0 ? 2 : 0, ((width - labelW - valueW) * row.value) / max);
    chart.append(
      svg("text", { class: "axis strong", x: labelW - 10, y: y + rowH / 2 + 4, "text-anchor": "end" }, row.label),
      svg("rect", {
        class: "bar", x: labelW, y: y + 5, width: w, height: rowH - 10, rx: 3,
        "data-label": row.label, "data-value": row.value,
      }, svg("title", {}, `${row.label}: ${format(row.value)}`)),
      svg("text", { class: "axis", x: labelW + w + 8, y: y + rowH / 2 + 4 }, format(row.value)),
    );
  });
  return h("div", { class: "chart-box" }, chart);
}

function legend(series) {
  return h("ul", { class: "legend", "aria-hidden": "true" },
    series.map((s) => h("li", {}, h("span", { class: `swatch ${s.className || ""}` }), s.name)));
}
