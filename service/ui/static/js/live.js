// A region of a page that loads its data, draws it, and (optionally) reloads it while the page is shown.

import { errorBox, h, relative } from "./dom.js";

/**
 * live(ctx, {load, draw, every}) -> an element.
 * load() fetches (may throw ApiError); draw(data) returns the nodes to show. A reload whose data did not change
 * leaves the DOM alone (no flicker, focus stays where it was). A failed reload keeps the last good view and shows
 * the error above it. The returned element has .reload() for after an action.
 */
export function live(ctx, { load, draw, every = 0, label = "Loading…" }) {
  const error = h("div", { class: "live-error" });
  const body = h("div", { class: "live-body", "aria-busy": "true" }, h("p", { class: "muted loading" }, label));
  const region = h("div", { class: "live" }, error, body);
  let last = null;

  async function reload() {
    try {
      const data = await load();
      error.replaceChildren();
      const fingerprint = JSON.stringify(data);
      if (fingerprint === last) {
        // Same data, later moment: "5 s ago" becomes "1 min ago" without redrawing anything else.
        for (const t of body.querySelectorAll("time[datetime]")) t.textContent = relative(t.dateTime);
        return;
      }
      last = fingerprint;
      const nodes = [draw(data)].flat(Infinity).filter((n) => n !== null && n !== undefined && n !== false);
      body.replaceChildren(...nodes);
      body.removeAttribute("aria-busy");
    } catch (err) {
      if (last === null) {
        body.replaceChildren();
        body.removeAttribute("aria-busy");
      }
      error.replaceChildren(errorBox(err));
    }
  }

  region.reload = () => {
    last = null;
    return reload();
  };
  region.ready = reload();
  if (every) ctx.every(every, reload);
  return region;
}
