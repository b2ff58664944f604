// The API client: the key from session storage, JSON GETs, problem+json errors, and an SSE reader.
// EventSource cannot send an Authorization header, so events are read with fetch() and a stream
// reader, which can.

const KEY = "xpumesh.key";

export class ApiError extends Error {
  constructor(status, title, detail) {
    super(detail ? `${title}: ${detail}` : title);
    this.status = status;
    this.title = title;
    this.detail = detail || "";
  }
}

export const session = {
  get key() { return sessionStorage.getItem(KEY); },
  set key(value) {
    if (value) sessionStorage.setItem(KEY, value);
    else sessionStorage.removeItem(KEY);
  },
};

function query(params) {
  const q = new URLSearchParams();
  for (const [name, value] of Object.entries(params || {})) {
    if (value === undefined || value === null || value === "") continue;
    for (const v of Array.isArray(value) ? value : [value]) q.append(name, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

async function problem(resp) {
  let title = resp.statusText || "Request failed";
  let detail = "";
  try {
    const body = await resp.json();
    title = body.title || title;
    detail = body.detail || "";
  } catch (_) { /* not JSON */ }
  return new ApiError(resp.status, title, detail);
}

export async function get(path, params, { signal } = {}) {
  const key = session.key;
  let resp;
  try {
    resp = await fetch(path + query(params), {
      headers: { Accept: "application/json", ...(key ? { Authorization: `Bearer ${key}` } : {}) },
      signal,
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "The gateway cannot be reached", "check that xpumesh is running");
  }
  if (!resp.ok) throw await problem(resp);
  return resp.json();
}

// Read a text/event-stream; call onEvent({event, id, data}) per event. Resolves when the stream ends.
export async function stream(path, params, onEvent, { signal, onOpen } = {}) {
  const resp = await fetch(path + query(params), {
    headers: { Accept: "text/event-stream", Authorization: `Bearer ${session.key}` },
    signal,
    cache: "no-store",
  });
  if (!resp.ok || !resp.body) throw await problem(resp);
  if (onOpen) onOpen();
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const ev = { event: "message", id: "", data: "" };
      const data = [];
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "data") data.push(val);
        else if (field === "event") ev.event = val;
        else if (field === "id") ev.id = val;
      }
      if (data.length) {
        ev.data = data.join("\n");
        onEvent(ev);
      }
    }
  }
}
