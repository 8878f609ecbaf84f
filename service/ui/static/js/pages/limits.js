// Rate-limit headroom per model (GET /v1/limits): configured, effective (after 429 back-off) and used.

import { api } from "../api.js";
import { badge, fmtCompact, fmtInt, fmtPercent, h, notice, progress, table, when } from "../dom.js";
import { live } from "../live.js";

/** Used against the limit in force: a bar and "N% free". */
function headroom(used, limit, what) {
  if (used === null || used === undefined || !limit) return h("span", { class: "muted" }, "unknown");
  const free = Math.max(0, 1 - used / limit);
  return h("div", { class: "progress-cell" },
    progress([{ label: "Used", value: Math.min(used, limit), className: free < 0.1 ? "bad" : free < 0.3 ? "late" : "ok" }],
      limit, `${what} used`),
    h("span", { class: "progress-text" }, `${fmtPercent(free)} free`));
}

function limitCell(configured, effective, fmt) {
  if (!effective || effective === configured) return fmt(configured);
  return h("span", {}, h("strong", { class: "reduced" }, fmt(effective)), h("span", { class: "muted" }, ` of ${fmt(configured)}`));
}

export function page(ctx) {
  ctx.title("Rate limits");
  const region = live(ctx, {
    every: 5000,
    load: () => api("/v1/limits"),
    draw: (doc) => {
      const tenant = doc.tenant;
      // The scheduler publishes the limiter's snapshot of the tenant: {configured, used: {...}, at}.
      const used = tenant.used?.used ?? tenant.used ?? {};
      const caps = Object.entries(tenant.configured);
      return [
        doc.as_of
          ? h("p", { class: "muted" }, `Upstream account “${doc.account}”, ${doc.window_seconds}-second window, as of `,
            when(doc.as_of), ".")
          : notice("No scheduler has reported in the last 30 seconds: effective limits and current use are unknown. "
            + "Configured limits are shown.", "warn"),
        table({
          caption: "Per model, shared by every tenant on the account",
          rows: doc.models,
          className: "limits",
          columns: [
            {
              label: "Model",
              render: (m) => [m.model, m.effective && (m.effective.rpm < m.configured.rpm || m.effective.tpm < m.configured.tpm)
                ? [" ", badge("backing_off")] : null],
            },
            { label: "Requests / min", numeric: true, render: (m) => limitCell(m.configured.rpm, m.effective?.rpm, fmtInt) },
            { label: "Requests used", numeric: true, render: (m) => (m.used ? fmtInt(m.used.requests) : "—") },
            { label: "Request headroom", render: (m) => headroom(m.used?.requests, m.effective?.rpm ?? m.configured.rpm, `${m.model} requests`) },
            { label: "Tokens / min", numeric: true, render: (m) => limitCell(m.configured.tpm, m.effective?.tpm, fmtCompact) },
            { label: "Tokens used", numeric: true, render: (m) => (m.used ? fmtCompact(m.used.tokens) : "—") },
            { label: "Token headroom", render: (m) => headroom(m.used?.tokens, m.effective?.tpm ?? m.configured.tpm, `${m.model} tokens`) },
          ],
        }),
        h("section", { "aria-labelledby": "tenant-h" },
          h("h2", { id: "tenant-h" }, `Your tenant’s caps (${tenant.tenant})`),
          table({
            rows: caps,
            columns: [
              { label: "Cap", render: ([name]) => ({ rpm: "Requests / min", tpm: "Tokens / min", concurrency: "Calls in flight" })[name] || name },
              { label: "Configured", numeric: true, render: ([, v]) => (v === null ? "no cap" : fmtInt(v)) },
              {
                label: "Used",
                numeric: true,
                render: ([name]) => {
                  const value = { rpm: used.requests, tpm: used.tokens, concurrency: used.in_flight }[name];
                  return value === undefined ? "—" : fmtInt(value);
                },
              },
            ],
          })),
      ];
    },
  });
  ctx.root.append(
    h("div", { class: "page-head" }, h("h1", {}, "Rate limits"),
      h("p", { class: "muted live-note" }, "Effective limits drop below configured ones while MiniMax answers 429.")),
    region);
  return region.ready;
}
