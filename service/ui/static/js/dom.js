// Building blocks: elements from data (always as text, never as HTML), formatting, tables, badges, bars.

const SVG_NS = "http://www.w3.org/2000/svg";

function build(el, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") el.setAttribute("class", value);
    else if (name === "text") el.textContent = String(value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (name === "value" || name === "checked" || name === "disabled" || name === "selected") el[name] = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** h("a", {href: "#/jobs", class: "x"}, "text", otherNode) */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

export function svg(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

const integer = new Intl.NumberFormat("en-US");
const compact = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 });

export function fmtInt(n) {
  return n === null || n === undefined ? "—" : integer.format(Number(n));
}

export function fmtCompact(n) {
  return n === null || n === undefined ? "—" : compact.format(Number(n));
}

/** USD amounts are tiny per job: show enough digits to see them, without trailing noise. */
export function fmtUSD(value) {
  if (value === null || value === undefined) return "—";
  const n = Number(value);
  if (n === 0) return "$0";
  const digits = Math.abs(n) >= 1 ? 2 : Math.abs(n) >= 0.01 ? 4 : 6;
  return "$" + n.toFixed(digits).replace(/(\.\d*?[1-9])0+$/, "$1").replace(/\.0+$/, "");
}

export function fmtPercent(fraction) {
  return `${Math.round(fraction * 100)}%`;
}

export function fmtDuration(ms) {
  if (ms === null || ms === undefined) return "—";
  if (ms < 1000) return `${ms} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function relative(iso, now = Date.now()) {
  const delta = (new Date(iso).getTime() - now) / 1000;
  const abs = Math.abs(delta);
  let text;
  if (abs < 5) return "just now";
  if (abs < 60) text = `${Math.round(abs)} s`;
  else if (abs < 3600) text = `${Math.round(abs / 60)} min`;
  else if (abs < 86400) text = `${(abs / 3600).toFixed(abs < 36000 ? 1 : 0)} h`;
  else text = `${Math.round(abs / 86400)} d`;
  return delta < 0 ? `${text} ago` : `in ${text}`;
}

export function absolute(iso) {
  return new Date(iso).toLocaleString(undefined, {
    year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
}

/** A <time> showing "3 min ago", the exact moment on hover and to assistive technology. */
export function when(iso) {
  if (!iso) return h("span", { class: "muted" }, "—");
  return h("time", { datetime: iso, title: absolute(iso) }, relative(iso));
}

export function badge(status) {
  return h("span", { class: `badge badge-${String(status).replace(/[^a-z_]/gi, "")}` }, String(status).replace(/_/g, " "));
}

export function code(text) {
  return h("code", {}, text);
}

/**
 * columns: [{label, render(row) -> Node|string, numeric?}]; the first column's cells are row headers.
 */
export function table({ caption, columns, rows, empty = "Nothing here yet.", className = "" }) {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  return h("div", { class: "table-wrap" },
    h("table", { class: className },
      caption ? h("caption", {}, caption) : null,
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.numeric ? "num" : null }, c.label)))),
      h("tbody", {}, rows.map((row) => h("tr", {}, columns.map((c, i) => {
        const content = c.render(row);
        const cls = c.numeric ? "num" : null;
        return i === 0 ? h("th", { scope: "row", class: cls }, content) : h("td", { class: cls }, content);
      }))))));
}

/** A description list from [label, value] pairs; null values are left out. */
export function facts(pairs) {
  return h("dl", { class: "facts" }, pairs.filter(([, v]) => v !== null && v !== undefined && v !== "").map(([k, v]) => [
    h("dt", {}, k), h("dd", {}, v),
  ]));
}

/**
 * A segmented bar: parts [{label, value, className}] out of total. Exposed as one progressbar.
 */
export function progress(parts, total, label) {
  const done = parts.reduce((sum, p) => sum + p.value, 0);
  const bar = h("div", {
    class: "progress", role: "progressbar", "aria-label": label,
    "aria-valuemin": 0, "aria-valuemax": total, "aria-valuenow": done,
    "aria-valuetext": `${fmtInt(done)} of ${fmtInt(total)}`,
  });
  for (const part of parts) {
    if (!part.value || !total) continue;
    const seg = h("span", { class: `seg ${part.className || ""}`, title: `${part.label}: ${fmtInt(part.value)}` });
    seg.style.width = `${(100 * part.value) / total}%`;
    bar.append(seg);
  }
  return bar;
}

export function metadata(meta) {
  const entries = Object.entries(meta || {});
  if (!entries.length) return h("span", { class: "muted" }, "—");
  return h("span", { class: "meta" }, entries.map(([k, v]) => h("span", { class: "tag" }, `${k}=${v}`)));
}

export function errorBox(err) {
  const message = err && err.message ? err.message : String(err);
  return h("div", { class: "notice error", role: "alert" }, message);
}

export function notice(text, kind = "info") {
  return h("div", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
}
