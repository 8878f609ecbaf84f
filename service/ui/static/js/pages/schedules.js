// Schedules with their next run and latest runs (GET /v1/schedules). A server without schedules answers 404:
// the page says so and the rest of the dashboard carries on.

import { ApiError, api } from "../api.js";
import { absolute, badge, code, h, notice, table, when } from "../dom.js";
import { live } from "../live.js";

const KIND = { job: "a job", batch: "a batch", documents: "a document batch" };

function nextRun(s) {
  if (!s.enabled) return h("span", { class: "muted" }, "paused");
  if (!s.next_run_at) return h("span", { class: "muted" }, s.end_at ? "ended" : "—");
  return [when(s.next_run_at), h("div", { class: "muted small" }, absolute(s.next_run_at)),
    s.buffered_run_at ? h("div", { class: "muted small" }, "one run buffered behind the running one") : null];
}

function runLink(run) {
  if (run.batch_id) return h("a", { href: `#/batches/${run.batch_id}`, class: "mono small" }, run.batch_id);
  if (run.job_id) return h("a", { href: `#/jobs/${run.job_id}`, class: "mono small" }, run.job_id);
  return run.error ? h("span", { class: "error-text small" }, run.error) : null;
}

function latestRuns(s) {
  const runs = s.latest_runs || [];
  if (!runs.length) return h("span", { class: "muted" }, "no run yet");
  return h("ul", { class: "plain runs" }, runs.slice(0, 3).map((run) => h("li", {},
    when(run.due_at), " ", badge(run.outcome || run.status), run.trigger !== "schedule" ? ` ${run.trigger}` : "", " ",
    runLink(run))));
}

export function page(ctx) {
  ctx.title("Schedules");
  const region = live(ctx, {
    every: 10000,
    load: async () => {
      try {
        return await api("/v1/schedules", { params: { limit: 100 } });
      } catch (err) {
        if (err instanceof ApiError && err.status === 404) return { unavailable: true };
        throw err;
      }
    },
    draw: (answer) => {
      if (answer.unavailable) {
        return notice("Schedules are not available on this server (GET /v1/schedules answered 404). "
          + "The rest of the dashboard works as usual.", "info");
      }
      return table({
        caption: "Schedules, newest first",
        rows: answer.data,
        empty: "No schedules yet. Create one with POST /v1/schedules.",
        columns: [
          {
            label: "Name",
            render: (s) => [s.name, h("div", { class: "muted small mono" }, s.id)],
          },
          {
            label: "When",
            render: (s) => [code(s.cron), ` ${s.timezone}`,
              h("div", { class: "muted small" }, `runs ${KIND[Object.keys(KIND).find((k) => s.template?.[k])] || "a template"}; `
                + `overlap ${s.overlap.replace("_", " ")}`)],
          },
          { label: "State", render: (s) => badge(s.enabled ? "enabled" : "paused") },
          { label: "Next run", render: nextRun },
          { label: "Latest runs", render: latestRuns },
        ],
      });
    },
  });
  ctx.root.append(h("div", { class: "page-head" }, h("h1", {}, "Schedules"),
    h("p", { class: "muted live-note" }, "Times are shown in your browser’s timezone.")), region);
  return region.ready;
}
