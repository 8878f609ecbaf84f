// Webhook deliveries with their attempts, filtered by status, and a redeliver button on each.

import { api } from "../api.js";
import { badge, errorBox, fmtInt, h, notice, table, when } from "../dom.js";
import { live } from "../live.js";

const STATES = ["pending", "delivered", "failed"];

function lastAnswer(d) {
  const a = d.attempts[d.attempts.length - 1];
  if (!a) return h("span", { class: "muted" }, "not sent yet");
  const summary = a.http_status ? `HTTP ${a.http_status}` : a.error || "no answer";
  if (d.attempts.length === 1 && !a.response_body) return [summary, h("span", { class: "muted" }, ` in ${fmtInt(a.latency_ms)} ms`)];
  return h("details", {}, h("summary", {}, `${summary} · ${d.attempts.length} attempt${d.attempts.length === 1 ? "" : "s"}`),
    h("ol", { class: "attempts" }, d.attempts.map((x) => h("li", {},
      when(x.at), " ", x.http_status ? `HTTP ${x.http_status}` : x.error || "no answer", ` · ${fmtInt(x.latency_ms)} ms`,
      x.response_body ? h("pre", { class: "raw" }, x.response_body) : null))));
}

export function page(ctx) {
  ctx.title("Webhook deliveries");
  const wanted = STATES.includes(ctx.params.get("status")) ? ctx.params.get("status") : "";
  const cursor = ctx.params.get("cursor");
  const message = h("div", { class: "action-result" });

  const select = h("select", { id: "delivery-filter", onchange: () => ctx.setParams(select.value ? { status: select.value } : {}) },
    h("option", { value: "" }, "All deliveries"),
    STATES.map((s) => h("option", { value: s, selected: s === wanted }, s[0].toUpperCase() + s.slice(1))));

  async function redeliver(d, button) {
    button.disabled = true;
    button.textContent = "Queuing…";
    try {
      const again = await api(`/v1/webhook-deliveries/${encodeURIComponent(d.id)}/redeliver`, { method: "POST" });
      const text = `Redelivery of ${again.id} (${again.event_type}) queued; status ${again.status}.`;
      message.replaceChildren(notice(text));
      ctx.announce(text);
      await region.reload();
    } catch (err) {
      message.replaceChildren(errorBox(err));
      button.disabled = false;
      button.textContent = "Redeliver";
    }
  }

  const region = live(ctx, {
    every: 5000,
    load: async () => {
      const [page, endpoints] = await Promise.all([
        api("/v1/webhook-deliveries", { params: { status: wanted, cursor, limit: 50 } }),
        api("/v1/webhook-endpoints", { params: { limit: 200 } }),
      ]);
      return { page, urls: Object.fromEntries(endpoints.data.map((e) => [e.id, e.url])) };
    },
    draw: ({ page, urls }) => [
      table({
        caption: wanted ? `Deliveries: ${wanted}` : "Deliveries, newest first",
        rows: page.data,
        className: "deliveries",
        empty: wanted ? `No ${wanted} deliveries.` : "No deliveries yet. Register an endpoint with POST /v1/webhook-endpoints.",
        columns: [
          { label: "Event", render: (d) => [h("span", { class: "mono" }, d.event_type), h("div", { class: "muted small mono" }, d.id)] },
          {
            label: "Target",
            render: (d) => (d.endpoint_id
              ? [h("span", { class: "mono wrap" }, urls[d.endpoint_id] || "(deleted endpoint)"),
                h("div", { class: "muted small mono" }, d.endpoint_id)]
              : [h("span", { class: "mono wrap" }, d.url), h("div", { class: "muted small" }, "the job’s own webhook_url")]),
          },
          { label: "Status", render: (d) => badge(d.status) },
          { label: "Created", render: (d) => when(d.created_at) },
          { label: "Last answer", render: lastAnswer },
          {
            label: "Next attempt",
            render: (d) => (d.status === "pending" && d.next_attempt_at
              ? new Date(d.next_attempt_at).getTime() <= Date.now() ? "due now" : when(d.next_attempt_at)
              : d.error ? h("span", { class: "error-text" }, d.error) : h("span", { class: "muted" }, "—")),
          },
          {
            label: "Actions",
            render: (d) => {
              const button = h("button", { type: "button", "aria-label": `Redeliver ${d.id}` }, "Redeliver");
              button.addEventListener("click", () => redeliver(d, button));
              return button;
            },
          },
        ],
      }),
      cursor || page.has_more ? h("nav", { class: "pager", "aria-label": "Pages" },
        cursor ? h("button", { type: "button", onclick: () => ctx.setParams(wanted ? { status: wanted } : {}) }, "← Newest") : null,
        page.has_more ? h("button", {
          type: "button", onclick: () => ctx.setParams({ ...(wanted ? { status: wanted } : {}), cursor: page.next_cursor }),
        }, "Older →") : null) : null,
    ],
  });
  ctx.root.append(
    h("div", { class: "page-head" }, h("h1", {}, "Webhook deliveries"),
      h("div", { class: "inline-form" }, h("label", { for: "delivery-filter" }, "Show"), select)),
    message, region);
  return region.ready;
}
