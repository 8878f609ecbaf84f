// Jobs: the list (live, filtered by status, paged) and one job (attempts, result, usage and cost, why it waits).

import { api } from "../api.js";
import {
  badge, code, errorBox, facts, fmtDuration, fmtInt, fmtUSD, h, metadata, notice, table, when,
} from "../dom.js";
import { live } from "../live.js";

export const STATUSES = ["queued", "running", "retrying", "succeeded", "failed", "canceled", "expired"];
const FINAL = new Set(["succeeded", "failed", "canceled", "expired"]);
const REFRESH_MS = 2000;

export function list(ctx) {
  ctx.title("Jobs");
  const chosen = ctx.params.getAll("status");
  const cursor = ctx.params.get("cursor");

  const filters = h("fieldset", { class: "filters" }, h("legend", {}, "Status"),
    STATUSES.map((s) => h("label", { class: "check" },
      h("input", {
        type: "checkbox", name: "status", value: s, checked: chosen.includes(s),
        onchange: () => {
          const next = new URLSearchParams();
          for (const box of filters.querySelectorAll("input:checked")) next.append("status", box.value);
          ctx.setParams(next);
        },
      }), badge(s))),
    chosen.length ? h("button", { type: "button", class: "link", onclick: () => ctx.setParams({}) }, "Show all") : null);

  const region = live(ctx, {
    every: REFRESH_MS,
    load: () => api("/v1/jobs", { params: { status: chosen, cursor, limit: 50 } }),
    draw: (page) => [
      table({
        caption: chosen.length ? `Jobs: ${chosen.join(", ")}` : "Jobs, newest first",
        rows: page.data,
        empty: chosen.length ? "No jobs with this status." : "No jobs yet. Submit one with POST /v1/jobs.",
        columns: [
          { label: "Job", render: (j) => h("a", { href: `#/jobs/${j.id}`, class: "mono" }, j.id) },
          { label: "Status", render: (j) => badge(j.status) },
          { label: "Model", render: (j) => j.model },
          { label: "Created", render: (j) => when(j.created_at) },
          { label: "Attempts", numeric: true, render: (j) => `${j.attempt_count} / ${j.max_attempts}` },
          { label: "Tokens in / out", numeric: true, render: (j) => `${fmtInt(j.usage.input_tokens)} / ${fmtInt(j.usage.output_tokens)}` },
          { label: "Cost", numeric: true, render: (j) => fmtUSD(j.usage.cost_usd) },
          { label: "Metadata", render: (j) => metadata(j.metadata) },
        ],
      }),
      pager(ctx, chosen, cursor, page),
    ],
  });

  ctx.root.append(
    h("div", { class: "page-head" }, h("h1", {}, "Jobs"),
      h("p", { class: "muted live-note" }, "Updates every 2 seconds. Batch requests are listed under their batch.")),
    filters,
    region,
  );
  return region.ready;
}

function pager(ctx, chosen, cursor, page) {
  if (!cursor && !page.has_more) return null;
  const base = () => {
    const p = new URLSearchParams();
    chosen.forEach((s) => p.append("status", s));
    return p;
  };
  return h("nav", { class: "pager", "aria-label": "Pages" },
    cursor ? h("button", { type: "button", onclick: () => ctx.setParams(base()) }, "← Newest") : null,
    page.has_more ? h("button", {
      type: "button",
      onclick: () => {
        const p = base();
        p.set("cursor", page.next_cursor);
        ctx.setParams(p);
      },
    }, "Older →") : null);
}

const WAIT_REASONS = {
  retry_backoff: "Waiting to try again after a failed attempt.",
  rate_limit: "Held back by the model's rate limit on the upstream account.",
  tenant_cap: "Held back by your tenant's own cap.",
  worker_capacity: "Every worker is busy; it runs when one frees up.",
  tenant_key: "Held: your own MiniMax key cannot be used right now.",
  dispatched: "Handed to a worker; starting soon.",
  scheduling: "Waiting for the scheduler to hand it to a worker.",
};

function waitingView(job) {
  if (job.status === "running") {
    return notice(`Running: ${fmtInt(job.progress.output_tokens_so_far)} output tokens received so far.`);
  }
  if (!job.waiting) return null;
  const w = job.waiting;
  return h("div", { class: "notice waiting", role: "status" },
    h("strong", {}, "Why it waits: "), WAIT_REASONS[w.reason] || w.reason,
    w.limit ? [" Limit: ", code(w.limit), "."] : null,
    w.until ? [" Next chance ", when(w.until), "."] : null,
    w.detail ? [" ", w.detail] : null);
}

// The model's reasoning: thinking blocks (Anthropic format, or the OpenAI format's <think> / reasoning_details, which
// the worker turns into thinking blocks), shown folded under the answer rather than in front of it.
function reasoningOf(result) {
  const blocks = Array.isArray(result.content) ? result.content : [];
  return blocks.filter((b) => b && b.type === "thinking" && typeof b.thinking === "string" && b.thinking)
    .map((b) => b.thinking).join("\n\n");
}

function resultView(result) {
  if (!result) return null;
  const reasoning = reasoningOf(result);
  return h("section", { "aria-labelledby": "result-h" },
    h("h2", { id: "result-h" }, "Result"),
    facts([["Stop reason", result.stop_reason], ["Upstream request", result.upstream_request_id]]),
    h("pre", { class: "result-text", tabindex: "0", "aria-label": "Result text" }, result.text || "(no text)"),
    reasoning ? h("details", { class: "reasoning" }, h("summary", {}, "Reasoning"),
      h("pre", { class: "reasoning-text", tabindex: "0", "aria-label": "Reasoning" }, reasoning)) : null,
    h("details", {}, h("summary", {}, "Raw response"),
      h("pre", { class: "raw", tabindex: "0" }, JSON.stringify(result.raw, null, 2))));
}

function usageView(job) {
  const u = job.usage;
  return h("section", { "aria-labelledby": "usage-h" },
    h("h2", { id: "usage-h" }, "Usage and cost"),
    h("div", { class: "stats" },
      stat("Input tokens", fmtInt(u.input_tokens)),
      stat("Output tokens", fmtInt(u.output_tokens)),
      stat("Cache read", fmtInt(u.cache_read_tokens)),
      stat("Cache write", fmtInt(u.cache_write_tokens)),
      stat("Cost", fmtUSD(u.cost_usd))));
}

export function stat(label, value) {
  return h("div", { class: "stat" }, h("div", { class: "stat-value" }, value), h("div", { class: "stat-label" }, label));
}

function attemptsView(attempts) {
  return h("section", { "aria-labelledby": "attempts-h" },
    h("h2", { id: "attempts-h" }, "Attempts"),
    table({
      rows: attempts,
      empty: "No attempt yet.",
      columns: [
        { label: "#", render: (a) => String(a.number) },
        { label: "Started", render: (a) => when(a.started_at) },
        { label: "Duration", numeric: true, render: (a) => (a.ended_at ? fmtDuration(a.duration_ms) : "running") },
        { label: "HTTP", numeric: true, render: (a) => (a.http_status ?? "—") },
        { label: "MiniMax code", numeric: true, render: (a) => (a.minimax_code ?? "—") },
        { label: "Outcome", render: (a) => (a.classification ? badge(a.classification) : "—") },
        { label: "Error", render: (a) => (a.error_message ? `${a.error_type || "error"}: ${a.error_message}` : "—") },
        { label: "Tokens in / out", numeric: true, render: (a) => `${fmtInt(a.usage.input_tokens)} / ${fmtInt(a.usage.output_tokens)}` },
      ],
    }));
}

export function detail(ctx) {
  const [id] = ctx.args;
  ctx.title(id);
  const actions = h("div", { class: "actions" });
  const heading = h("h1", { class: "mono" }, id);
  const back = h("a", { href: "#/jobs", class: "back" }, "← Jobs");
  let finished = false;

  const region = live(ctx, {
    every: REFRESH_MS,
    load: async () => (finished ? region.lastJob : api(`/v1/jobs/${encodeURIComponent(id)}`)),
    draw: (job) => {
      region.lastJob = job;
      finished = FINAL.has(job.status);
      heading.replaceChildren(h("span", { class: "mono" }, job.id), " ", badge(job.status));
      if (job.batch_id) {
        back.href = `#/batches/${job.batch_id}`;
        back.textContent = `← Batch ${job.batch_id}`;
      }
      // Rebuilt only when the job finishes, so a refresh never closes an open "cancel?" question.
      if (finished) actions.replaceChildren();
      else if (!actions.firstChild) actions.append(cancelButton(ctx, job, () => region.reload()));
      return [
        waitingView(job),
        job.error ? h("div", { class: `notice ${finished ? "error" : "warn"}` },
          h("strong", {}, `${job.error.type}: `), job.error.message,
          job.error.retry ? h("div", { class: "muted" }, job.error.retry) : null) : null,
        facts([
          ["Model", `${job.model} (${job.format})`],
          ["Created", when(job.created_at)],
          ["Started", job.started_at ? when(job.started_at) : null],
          ["Finished", job.finished_at ? when(job.finished_at) : null],
          ["Expires", finished ? null : when(job.expires_at)],
          ["Attempts", `${job.attempt_count} of at most ${job.max_attempts}`],
          ["Priority", String(job.priority)],
          ["Batch", job.batch_id ? h("a", { href: `#/batches/${job.batch_id}`, class: "mono" }, job.batch_id) : null],
          ["Custom ID", job.custom_id],
          ["Estimated input", `${fmtInt(job.estimated_input_tokens)} tokens`],
          ["Metadata", metadata(job.metadata)],
        ]),
        usageView(job),
        resultView(job.result),
        attemptsView(job.attempts),
      ];
    },
  });
  ctx.root.append(back, h("div", { class: "page-head" }, heading, actions), region);
  return region.ready;
}

function cancelButton(ctx, job, after) {
  const slot = h("div", { class: "confirm" });
  const ask = h("button", {
    type: "button", class: "danger",
    onclick: () => {
      slot.replaceChildren(
        h("span", {}, "Cancel this job? Tokens already used still count. "),
        h("button", {
          type: "button", class: "danger",
          onclick: async (event) => {
            event.target.disabled = true;
            try {
              await api(`/v1/jobs/${encodeURIComponent(job.id)}/cancel`, { method: "POST" });
              ctx.announce(`Job ${job.id} canceled.`);
              await after();
            } catch (err) {
              slot.replaceChildren(errorBox(err));
            }
          },
        }, "Yes, cancel job"),
        h("button", { type: "button", onclick: () => slot.replaceChildren(ask) }, "Keep it"));
      slot.querySelector("button").focus();
    },
  }, "Cancel job");
  slot.append(ask);
  return slot;
}
