// Batches: the list with live progress, and one batch: counts, ETA, cancel, and its results file as a table.

import { api, jsonLines } from "../api.js";
import {
  absolute, badge, errorBox, facts, fmtInt, fmtUSD, h, metadata, progress, relative, table, when,
} from "../dom.js";
import { live } from "../live.js";
import { stat } from "./jobs.js";

const REFRESH_MS = 2000;
const RESULT_TYPES = ["succeeded", "errored", "canceled", "expired"];
const MAX_ROWS = 1000;

function finished(b) {
  const c = b.request_counts;
  return c.succeeded + c.errored + c.canceled + c.expired;
}

function batchProgress(b) {
  const c = b.request_counts;
  return progress([
    { label: "Succeeded", value: c.succeeded, className: "ok" },
    { label: "Errored", value: c.errored, className: "bad" },
    { label: "Canceled", value: c.canceled, className: "off" },
    { label: "Expired", value: c.expired, className: "late" },
  ], b.request_total, `Batch ${b.id} progress`);
}

function eta(b) {
  if (b.processing_status === "ended") return b.ended_at ? ["ended ", when(b.ended_at)] : "ended";
  if (!b.estimated_completion_at) return h("span", { class: "muted" }, "estimating…");
  return h("time", { class: "eta", datetime: b.estimated_completion_at, title: absolute(b.estimated_completion_at) },
    relative(b.estimated_completion_at));
}

function counts(b) {
  const c = b.request_counts;
  return h("span", { class: "counts" },
    h("span", { class: "count ok" }, `${fmtInt(c.succeeded)} succeeded`),
    c.errored ? h("span", { class: "count bad" }, `${fmtInt(c.errored)} errored`) : null,
    c.canceled ? h("span", { class: "count off" }, `${fmtInt(c.canceled)} canceled`) : null,
    c.expired ? h("span", { class: "count late" }, `${fmtInt(c.expired)} expired`) : null,
    c.processing ? h("span", { class: "count" }, `${fmtInt(c.processing)} processing`) : null);
}

export function list(ctx) {
  ctx.title("Batches");
  const cursor = ctx.params.get("cursor");
  const region = live(ctx, {
    every: REFRESH_MS,
    load: () => api("/v1/batches", { params: { cursor, limit: 50 } }),
    draw: (page) => [
      table({
        caption: "Batches, newest first",
        rows: page.data,
        empty: "No batches yet. Submit one with POST /v1/batches.",
        columns: [
          { label: "Batch", render: (b) => h("a", { href: `#/batches/${b.id}`, class: "mono" }, b.id) },
          { label: "Status", render: (b) => badge(b.processing_status) },
          {
            label: "Progress",
            render: (b) => h("div", { class: "progress-cell" }, batchProgress(b),
              h("span", { class: "progress-text" }, `${fmtInt(finished(b))} / ${fmtInt(b.request_total)}`)),
          },
          { label: "Counts", render: counts },
          { label: "ETA", render: eta },
          { label: "Created", render: (b) => when(b.created_at) },
          { label: "Cost", numeric: true, render: (b) => fmtUSD(b.usage.cost_usd) },
        ],
      }),
      cursor || page.has_more ? h("nav", { class: "pager", "aria-label": "Pages" },
        cursor ? h("button", { type: "button", onclick: () => ctx.setParams({}) }, "← Newest") : null,
        page.has_more ? h("button", { type: "button", onclick: () => ctx.setParams({ cursor: page.next_cursor }) },
          "Older →") : null) : null,
    ],
  });
  ctx.root.append(
    h("div", { class: "page-head" }, h("h1", {}, "Batches"),
      h("p", { class: "muted live-note" }, "Progress updates every 2 seconds.")),
    region);
  return region.ready;
}

export function detail(ctx) {
  const [id] = ctx.args;
  const path = `/v1/batches/${encodeURIComponent(id)}`;
  const wanted = ctx.params.get("status") || "";
  ctx.title(id);
  const heading = h("h1", {}, h("span", { class: "mono" }, id));
  const actions = h("div", { class: "actions" });
  let seen = -1;

  const results = h("section", { "aria-labelledby": "results-h" });
  const summary = live(ctx, {
    every: REFRESH_MS,
    load: () => api(path),
    draw: (b) => {
      heading.replaceChildren(h("span", { class: "mono" }, b.id), " ", badge(b.processing_status));
      if (b.processing_status !== "in_progress") actions.replaceChildren();
      else if (!actions.firstChild) actions.append(cancelButton(ctx, b, () => summary.reload()));
      // New lines in the results file: read it again.
      if (finished(b) !== seen) {
        seen = finished(b);
        loadResults(ctx, results, path, wanted, b);
      }
      const c = b.request_counts;
      return [
        h("div", { class: "big-progress" }, batchProgress(b),
          h("p", { class: "progress-text" },
            `${fmtInt(finished(b))} of ${fmtInt(b.request_total)} requests finished`,
            b.processing_status === "ended" ? "" : [" · ETA ", eta(b)])),
        h("div", { class: "stats" },
          stat("Processing", fmtInt(c.processing)), stat("Succeeded", fmtInt(c.succeeded)),
          stat("Errored", fmtInt(c.errored)), stat("Canceled", fmtInt(c.canceled)),
          stat("Expired", fmtInt(c.expired)), stat("Cost", fmtUSD(b.usage.cost_usd))),
        facts([
          ["Created", when(b.created_at)],
          ["Expires", b.processing_status === "ended" ? null : when(b.expires_at)],
          ["Cancel requested", b.cancel_initiated_at ? when(b.cancel_initiated_at) : null],
          ["Ended", b.ended_at ? when(b.ended_at) : null],
          ["Tokens in / out", `${fmtInt(b.usage.input_tokens)} / ${fmtInt(b.usage.output_tokens)}`],
          ["Webhook", b.webhook_url],
          ["Metadata", metadata(b.metadata)],
        ]),
      ];
    },
  });
  ctx.root.append(h("a", { href: "#/batches", class: "back" }, "← Batches"),
    h("div", { class: "page-head" }, heading, actions), summary, results);
  return summary.ready;
}

function cancelButton(ctx, batch, after) {
  const slot = h("div", { class: "confirm" });
  const ask = h("button", {
    type: "button", class: "danger",
    onclick: () => {
      slot.replaceChildren(
        h("span", {}, "Cancel the batch? Queued requests stop at once; running ones finish. "),
        h("button", {
          type: "button", class: "danger",
          onclick: async (event) => {
            event.target.disabled = true;
            try {
              const b = await api(`/v1/batches/${encodeURIComponent(batch.id)}/cancel`, { method: "POST" });
              ctx.announce(`Batch ${b.id} is ${b.processing_status.replace("_", " ")}.`);
              slot.replaceChildren();
              await after();
            } catch (err) {
              slot.replaceChildren(errorBox(err));
            }
          },
        }, "Yes, cancel batch"),
        h("button", { type: "button", onclick: () => slot.replaceChildren(ask) }, "Keep running"));
      slot.querySelector("button").focus();
    },
  }, "Cancel batch");
  slot.append(ask);
  return slot;
}

/** The text MiniMax answered, in either format. */
function outputText(message) {
  if (!message) return "";
  if (Array.isArray(message.content)) {
    return message.content.filter((b) => b.type === "text").map((b) => b.text).join("");
  }
  const choice = message.choices && message.choices[0];
  return (choice && choice.message && choice.message.content) || "";
}

function tokens(line) {
  const u = line.result.usage || (line.result.message && line.result.message.usage) || {};
  const input = u.input_tokens ?? u.prompt_tokens;
  const output = u.output_tokens ?? u.completion_tokens;
  return input === undefined && output === undefined ? "—" : `${fmtInt(input)} / ${fmtInt(output)}`;
}

/** How many result lines the filter selects, from the batch's exact counts. */
function expected(batch, wanted) {
  return wanted ? batch.request_counts[wanted] : finished(batch);
}

function downloadButton(path, batch, wanted) {
  const button = h("button", { type: "button" }, "Download JSONL");
  // The file needs the key, so a plain link to the API cannot download it: fetch it, then hand it over.
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      const text = await api(`${path}/results`, { params: { status: wanted }, text: true });
      const url = URL.createObjectURL(new Blob([text], { type: "application/x-ndjson" }));
      const link = h("a", { href: url, download: `${batch.id}${wanted ? `-${wanted}` : ""}.jsonl` });
      document.body.append(link);
      link.click();
      link.remove();
      window.setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (err) {
      button.replaceWith(errorBox(err));
    } finally {
      button.disabled = false;
    }
  });
  return button;
}

async function loadResults(ctx, section, path, wanted, batch) {
  const select = h("select", {
    id: "result-filter",
    onchange: () => ctx.setParams(select.value ? { status: select.value } : {}),
  }, h("option", { value: "" }, "All results"),
  RESULT_TYPES.map((t) => h("option", { value: t, selected: t === wanted }, t[0].toUpperCase() + t.slice(1))));
  const head = h("div", { class: "section-head" }, h("h2", { id: "results-h" }, "Results"),
    h("div", { class: "inline-form" }, h("label", { for: "result-filter" }, "Show"), select));
  let page;
  try {
    // A batch can hold 100,000 results: read only what the table shows.
    page = await jsonLines(`${path}/results`, { params: { status: wanted }, limit: MAX_ROWS });
  } catch (err) {
    section.replaceChildren(head, errorBox(err));
    return;
  }
  if (!ctx.alive()) return;
  const { lines, more } = page;
  const total = Math.max(expected(batch, wanted), lines.length);
  section.replaceChildren(head,
    h("p", { class: "muted results-count" },
      more ? `Showing the first ${fmtInt(lines.length)} of ${fmtInt(total)} lines`
        : `${fmtInt(lines.length)} line${lines.length === 1 ? "" : "s"}`,
      lines.length ? [" · ", downloadButton(path, batch, wanted)] : null),
    table({
      caption: wanted ? `Results: ${wanted}` : "Results",
      rows: lines,
      className: "results",
      empty: batch.processing_status === "ended" || wanted ? "No results here." : "No request has finished yet.",
      columns: [
        { label: "Custom ID", render: (l) => h("span", { class: "mono" }, l.custom_id) },
        { label: "Result", render: (l) => badge(l.result.type) },
        {
          label: "Output",
          render: (l) => (l.result.type === "errored"
            ? h("span", { class: "error-text" }, `${l.result.error.type}: ${l.result.error.message}`)
            : h("div", { class: "clip" }, outputText(l.result.message) || "—")),
        },
        { label: "Tokens in / out", numeric: true, render: tokens },
        { label: "Job", render: (l) => h("a", { href: `#/jobs/${l.job_id}`, class: "mono" }, l.job_id) },
      ],
    }));
}
