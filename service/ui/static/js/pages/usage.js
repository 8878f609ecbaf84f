// Usage and cost over time (GET /v1/usage?group_by=day), by model (group_by=model), and budgets.

import { api } from "../api.js";
import { barChart, hbarChart } from "../charts.js";
import { fmtCompact, fmtInt, fmtUSD, h, progress, table, when } from "../dom.js";
import { live } from "../live.js";
import { stat } from "./jobs.js";

const RANGES = [7, 30, 90];
const DAY_MS = 86400000;

/** The UTC days from `days - 1` days ago to today, as YYYY-MM-DD (the ledger groups by UTC day). */
function utcDays(days) {
  const today = Date.UTC(new Date().getUTCFullYear(), new Date().getUTCMonth(), new Date().getUTCDate());
  return Array.from({ length: days }, (_, i) => new Date(today - (days - 1 - i) * DAY_MS).toISOString().slice(0, 10));
}

function shortDay(day) {
  return new Date(`${day}T00:00:00Z`).toLocaleDateString(undefined, { month: "short", day: "numeric", timeZone: "UTC" });
}

function dataTable(caption, rows, columns) {
  return h("details", { class: "chart-data" }, h("summary", {}, "Show the numbers"), table({ caption, rows, columns }));
}

export function page(ctx) {
  ctx.title("Usage and cost");
  const days = RANGES.includes(Number(ctx.params.get("days"))) ? Number(ctx.params.get("days")) : 30;
  const categories = utcDays(days);
  const from = `${categories[0]}T00:00:00Z`;

  const select = h("select", { id: "range", onchange: () => ctx.setParams({ days: select.value }) },
    RANGES.map((d) => h("option", { value: d, selected: d === days }, `Last ${d} days`)));

  const region = live(ctx, {
    every: 30000,
    load: async () => {
      const [byDay, byModel, budgets] = await Promise.all([
        api("/v1/usage", { params: { group_by: "day", from } }),
        api("/v1/usage", { params: { group_by: "model", from } }),
        api("/v1/budgets"),
      ]);
      return { byDay, byModel, budgets };
    },
    draw: ({ byDay, byModel, budgets }) => {
      const day = new Map(byDay.data.map((r) => [r.key, r]));
      const pick = (field) => categories.map((d) => Number(day.get(d)?.[field] ?? 0));
      const cache = categories.map((d) => Number(day.get(d)?.cache_read_tokens ?? 0) + Number(day.get(d)?.cache_write_tokens ?? 0));
      const total = byDay.total;
      const dayRows = categories.filter((d) => day.has(d)).map((d) => day.get(d));
      return [
        h("div", { class: "stats" },
          stat("Cost", fmtUSD(total.cost_usd)), stat("Jobs", fmtInt(total.jobs)), stat("Attempts", fmtInt(total.attempts)),
          stat("Input tokens", fmtCompact(total.input_tokens)), stat("Output tokens", fmtCompact(total.output_tokens)),
          // Calls that broke or were stopped before MiniMax reported usage: our count, included above.
          stat("Estimated", `${fmtInt(total.estimated.attempts)} attempts, ${fmtUSD(total.estimated.cost_usd)}`)),
        h("section", { class: "card", "aria-labelledby": "cost-day-h" },
          h("h2", { id: "cost-day-h" }, "Cost per day (USD, UTC days)"),
          barChart({
            label: `Cost per day over the last ${days} days; total ${fmtUSD(total.cost_usd)}`,
            categories, categoryFormat: shortDay, format: fmtUSD,
            series: [{ name: "Cost", values: pick("cost_usd"), className: "s-cost" }],
          }),
          dataTable("Cost per day", dayRows, [
            { label: "Day", render: (r) => r.key },
            { label: "Jobs", numeric: true, render: (r) => fmtInt(r.jobs) },
            { label: "Attempts", numeric: true, render: (r) => fmtInt(r.attempts) },
            { label: "Cost", numeric: true, render: (r) => fmtUSD(r.cost_usd) },
            { label: "Of which estimated", numeric: true, render: (r) => fmtUSD(r.estimated.cost_usd) },
          ])),
        h("section", { class: "card", "aria-labelledby": "tokens-day-h" },
          h("h2", { id: "tokens-day-h" }, "Tokens per day"),
          barChart({
            label: `Tokens per day over the last ${days} days, input, output and cache`,
            categories, categoryFormat: shortDay, format: fmtInt, tickFormat: fmtCompact,
            series: [
              { name: "Input", values: pick("input_tokens"), className: "s-in" },
              { name: "Output", values: pick("output_tokens"), className: "s-out" },
              { name: "Cache", values: cache, className: "s-cache" },
            ],
          }),
          dataTable("Tokens per day", dayRows, [
            { label: "Day", render: (r) => r.key },
            { label: "Input", numeric: true, render: (r) => fmtInt(r.input_tokens) },
            { label: "Output", numeric: true, render: (r) => fmtInt(r.output_tokens) },
            { label: "Cache read", numeric: true, render: (r) => fmtInt(r.cache_read_tokens) },
            { label: "Cache write", numeric: true, render: (r) => fmtInt(r.cache_write_tokens) },
          ])),
        h("section", { class: "card", "aria-labelledby": "by-model-h" },
          h("h2", { id: "by-model-h" }, "Cost by model"),
          byModel.data.length
            ? hbarChart({
              label: `Cost by model over the last ${days} days`,
              rows: byModel.data.map((r) => ({ label: r.key, value: Number(r.cost_usd) })),
              format: fmtUSD,
            })
            : h("p", { class: "empty" }, "No usage in this period."),
          table({
            caption: "Usage by model",
            rows: byModel.data,
            empty: "",
            columns: [
              { label: "Model", render: (r) => r.key },
              { label: "Jobs", numeric: true, render: (r) => fmtInt(r.jobs) },
              { label: "Input tokens", numeric: true, render: (r) => fmtInt(r.input_tokens) },
              { label: "Output tokens", numeric: true, render: (r) => fmtInt(r.output_tokens) },
              { label: "Cost", numeric: true, render: (r) => fmtUSD(r.cost_usd) },
              {
                label: "Estimated (attempts: in / out)",
                numeric: true,
                render: (r) => `${fmtInt(r.estimated.attempts)}: ${fmtInt(r.estimated.input_tokens)} / ${fmtInt(r.estimated.output_tokens)}`,
              },
            ],
          })),
        budgetsView(budgets),
      ];
    },
  });
  ctx.root.append(
    h("div", { class: "page-head" }, h("h1", {}, "Usage and cost"),
      h("div", { class: "inline-form" }, h("label", { for: "range" }, "Period"), select)),
    region);
  return region.ready;
}

function budgetsView(budgets) {
  return h("section", { class: "card", "aria-labelledby": "budgets-h" },
    h("h2", { id: "budgets-h" }, "Budgets"),
    table({
      rows: budgets,
      empty: "No budget is set: spending is not capped.",
      columns: [
        { label: "Period", render: (b) => [b.period, b.api_key_id ? ` (key ${b.api_key_id})` : ""] },
        {
          label: "Spent",
          render: (b) => h("div", { class: "progress-cell" }, progress([
            { label: "Spent", value: Number(b.spent_usd), className: "ok" },
            { label: "Reserved", value: Number(b.reserved_usd), className: "late" },
          ], Number(b.limit_usd), `Budget ${b.period}`), h("span", { class: "progress-text" },
            `${fmtUSD(b.spent_usd)} of ${fmtUSD(b.limit_usd)}`)),
        },
        { label: "Reserved", numeric: true, render: (b) => fmtUSD(b.reserved_usd) },
        { label: "Remaining", numeric: true, render: (b) => fmtUSD(b.remaining_usd) },
        { label: "Soft limit", numeric: true, render: (b) => fmtUSD(b.soft_limit_usd) },
        { label: "Since", render: (b) => when(b.period_start) },
      ],
    }));
}
