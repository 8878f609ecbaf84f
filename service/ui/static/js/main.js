// The dashboard's shell: sign-in, navigation, and a hash router (#/jobs, #/batches/batch_..., ...).

import { api, credentials } from "./api.js";
import { h } from "./dom.js";
import * as batches from "./pages/batches.js";
import * as jobs from "./pages/jobs.js";
import * as limits from "./pages/limits.js";
import * as schedules from "./pages/schedules.js";
import * as usage from "./pages/usage.js";
import * as webhooks from "./pages/webhooks.js";

const ROUTES = [
  [/^jobs$/, jobs.list, "jobs"],
  [/^jobs\/([\w-]+)$/, jobs.detail, "jobs"],
  [/^batches$/, batches.list, "batches"],
  [/^batches\/([\w-]+)$/, batches.detail, "batches"],
  [/^usage$/, usage.page, "usage"],
  [/^limits$/, limits.page, "limits"],
  [/^webhooks$/, webhooks.page, "webhooks"],
  [/^schedules$/, schedules.page, "schedules"],
];
const HOME = "#/jobs";

const main = document.getElementById("main");
const header = document.getElementById("top");
const announcer = document.getElementById("announcer");
let current = null; // {timers, alive}

function announce(text) {
  announcer.textContent = "";
  // A fresh node each time, so the same message said twice is read twice.
  window.setTimeout(() => {
    announcer.textContent = text;
  }, 30);
}

function parseHash() {
  const raw = window.location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = raw.split("?");
  return { path: path.replace(/\/$/, ""), params: new URLSearchParams(query) };
}

function hashFor(path, params) {
  const query = params ? new URLSearchParams(params).toString() : "";
  return `#/${path}${query ? `?${query}` : ""}`;
}

function stopCurrent() {
  if (!current) return;
  current.alive = false;
  current.timers.forEach((t) => window.clearInterval(t));
  current = null;
}

function route(focus = true) {
  if (!credentials.get()) {
    showSignIn();
    return;
  }
  const { path, params } = parseHash();
  const match = ROUTES.map(([re, render, section]) => [path.match(re), render, section]).find(([m]) => m);
  if (!match) {
    window.location.replace(HOME);
    return;
  }
  const [groups, render, section] = match;
  stopCurrent();
  header.hidden = false;
  for (const link of header.querySelectorAll("nav a")) {
    if (link.dataset.section === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const state = { timers: [], alive: true };
  current = state;
  const root = h("div", { class: "page" });
  main.replaceChildren(root);
  const ctx = {
    root,
    args: groups.slice(1).map(decodeURIComponent),
    params,
    alive: () => state.alive,
    announce,
    every(ms, fn) {
      let running = false;
      state.timers.push(window.setInterval(async () => {
        if (running || document.hidden || !state.alive) return;
        running = true;
        try {
          await fn();
        } finally {
          running = false;
        }
      }, ms));
    },
    /** Same page, other query (filters, paging): replaces the history entry. */
    setParams(next) {
      window.location.replace(hashFor(path, next));
    },
    title(text) {
      document.title = `${text} · minimax-jobs`;
    },
  };
  Promise.resolve(render(ctx)).then(() => {
    const heading = root.querySelector("h1");
    if (focus && heading && state.alive) {
      heading.setAttribute("tabindex", "-1");
      heading.focus({ preventScroll: true });
    }
  });
}

function showSignIn(message = "") {
  stopCurrent();
  header.hidden = true;
  document.title = "Sign in · minimax-jobs";
  const input = h("input", {
    id: "api-key", name: "api-key", type: "password", autocomplete: "off", spellcheck: "false", required: true,
    placeholder: "mmj_…", "aria-describedby": "api-key-help",
  });
  const error = h("div", { class: "form-error" });
  const button = h("button", { type: "submit", class: "primary" }, "Sign in");
  if (message) error.append(h("div", { class: "notice error", role: "alert" }, message));
  const form = h("form", { class: "signin card", novalidate: true },
    h("h1", {}, "minimax-jobs"),
    h("p", { class: "muted" }, "Sign in with an API key to see your jobs, batches, usage and webhooks."),
    h("label", { for: "api-key" }, "API key"),
    input,
    h("p", { id: "api-key-help", class: "hint" },
      "Create one with ", h("code", {}, "mmjobs keys create --tenant NAME"),
      ". It is kept in this browser tab only and sent as ", h("code", {}, "Authorization: Bearer"), "."),
    error,
    button);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) {
      error.replaceChildren(h("div", { class: "notice error", role: "alert" }, "Enter your API key."));
      input.focus();
      return;
    }
    button.disabled = true;
    button.textContent = "Signing in…";
    try {
      const who = await api("/v1/limits", { key });
      credentials.set(key);
      setTenant(who.tenant.tenant);
      // Back to the page the visitor asked for, or the jobs list (a hash change routes by itself).
      if (parseHash().path) route();
      else window.location.replace(HOME);
    } catch (err) {
      error.replaceChildren(h("div", { class: "notice error", role: "alert" }, err.message));
      button.disabled = false;
      button.textContent = "Sign in";
      input.focus();
    }
  });
  main.replaceChildren(form);
  input.focus();
}

function setTenant(name) {
  sessionStorage.setItem("mmjobs.tenant", name);
  document.getElementById("tenant").textContent = name ? `Tenant: ${name}` : "";
}

function signOut(message = "") {
  credentials.clear();
  sessionStorage.removeItem("mmjobs.tenant");
  setTenant("");
  showSignIn(message);
}

document.getElementById("sign-out").addEventListener("click", () => signOut());
window.addEventListener("mmjobs:unauthorized", (event) => signOut(`Signed out: ${event.detail}`));
window.addEventListener("hashchange", () => {
  // In-page anchors (the skip link) are not routes.
  if (window.location.hash.startsWith("#/") || !window.location.hash) route();
});
setTenant(sessionStorage.getItem("mmjobs.tenant") || "");
route(false);
