// The REST API, as the dashboard calls it: the signed-in key on every request, errors as ApiError with the
// API's own message.

const KEY = "mmjobs.apiKey";

export const credentials = {
  get() {
    return sessionStorage.getItem(KEY);
  },
  set(key) {
    sessionStorage.setItem(KEY, key);
  },
  clear() {
    sessionStorage.removeItem(KEY);
  },
};

export class ApiError extends Error {
  constructor(status, type, message, field = null) {
    super(message);
    this.status = status;
    this.type = type;
    this.field = field;
  }
}

/**
 * api("/v1/jobs", {params: {status: ["queued", "running"]}}) -> the parsed JSON.
 * Options: method, params (arrays repeat the name), body (sent as JSON), text (return the body as text),
 * key (a key to try instead of the stored one: the sign-in form's).
 * A 401 on a stored key signs out (the "mmjobs:unauthorized" event); the error is thrown either way.
 */
export async function api(path, options = {}) {
  const response = await request(path, options);
  if (response.status === 204) return null;
  return options.text ? response.text() : response.json();
}

/**
 * The first `limit` lines of a JSONL answer, read as they stream in; the rest is not downloaded.
 * Returns {lines: [parsed objects], more: whether lines were left unread}.
 */
export async function jsonLines(path, { params = {}, limit = 1000 } = {}) {
  const response = await request(path, { params, text: true });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const lines = [];
  let pending = "";
  for (;;) {
    const { done, value } = await reader.read();
    pending += decoder.decode(value || new Uint8Array(), { stream: !done });
    const parts = pending.split("\n");
    pending = done ? "" : parts.pop();
    for (const part of parts) {
      if (!part.trim()) continue;
      if (lines.length === limit) {
        await reader.cancel();
        return { lines, more: true };
      }
      lines.push(JSON.parse(part));
    }
    if (done) return { lines, more: false };
  }
}

async function request(path, { method = "GET", params = {}, body, text = false, key } = {}) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(params)) {
    for (const v of Array.isArray(value) ? value : [value]) {
      if (v !== null && v !== undefined && v !== "") url.searchParams.append(name, String(v));
    }
  }
  const secret = key ?? credentials.get();
  const headers = { Accept: text ? "application/x-ndjson, application/json" : "application/json" };
  if (secret) headers.Authorization = `Bearer ${secret}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    throw new ApiError(0, "network_error", `Could not reach the API (${err.message}). Is the server running?`);
  }
  if (!response.ok) {
    let error = null;
    try {
      error = (await response.json()).error;
    } catch {
      // Not our JSON error shape (a proxy's page, say): fall back to the HTTP status below.
    }
    const failure = new ApiError(
      response.status,
      error?.type ?? "http_error",
      error?.message ?? `The API answered ${response.status} ${response.statusText}`.trim(),
      error?.field ?? null,
    );
    if (response.status === 401 && key === undefined) {
      window.dispatchEvent(new CustomEvent("mmjobs:unauthorized", { detail: failure.message }));
    }
    throw failure;
  }
  return response;
}
