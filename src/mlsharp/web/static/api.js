// A small client of the mlsharp REST API (docs/api.md): JSON requests with the API key,
// errors in the API's schema turned into ApiError, and Server-Sent Events over fetch
// (EventSource cannot send the Authorization header).

const KEY_STORAGE = "mlsharp.apiKey";

/** An error answered by the API ({error, message, status_code, ...}) or a network failure. */
export class ApiError extends Error {
  constructor({
    status = 0,
    code = "network",
    message = "",
    requestId = null,
    retryAfter = null,
  } = {}) {
    super(message || code);
    this.name = "ApiError";
    this.status = status; // 0 for network failures
    this.code = code; // the API's machine-readable "error" field
    this.requestId = requestId;
    this.retryAfter = retryAfter; // seconds (Retry-After of a 429 or 503), or null
  }
}

/** The stored API key, or "" when none. */
export function storedKey() {
  try {
    return localStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return "";
  }
}

/** Remember (or with "" forget) the API key in this browser. */
export function storeKey(key) {
  try {
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
  } catch {
    // storage disabled: the key lasts for this page only (see `sessionKey`)
  }
  sessionKey = key;
}

let sessionKey = storedKey();

function headersWithKey(headers = {}) {
  const all = new Headers(headers);
  if (sessionKey && !all.has("Authorization")) all.set("Authorization", `Bearer ${sessionKey}`);
  return all;
}

/** Is `url` on this page's origin (only there is the API key sent)? */
function sameOrigin(url) {
  return new URL(url, location.href).origin === location.origin;
}

/**
 * fetch() with the API key; resolves to the Response when it is 2xx/304, else throws
 * ApiError with the API's error code and message.
 */
export async function request(url, { method = "GET", body, headers, signal } = {}) {
  let response;
  try {
    response = await fetch(url, {
      method,
      body,
      signal,
      headers: sameOrigin(url) ? headersWithKey(headers) : new Headers(headers),
      credentials: "same-origin",
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError({ code: "network", message: String(error.message || error) });
  }
  if (response.ok || response.status === 304) return response;
  throw await errorFrom(response);
}

/** The ApiError of a non-2xx response (the API's JSON schema, else a generic one). */
export async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON (a proxy's HTML error page, for example)
  }
  const retryAfter = retryAfterSeconds(response.headers.get("Retry-After"));
  if (body && typeof body.error === "string") {
    return new ApiError({
      status: response.status,
      code: body.error,
      message: typeof body.message === "string" ? body.message : "",
      requestId: body.request_id || response.headers.get("X-Request-ID"),
      retryAfter,
    });
  }
  return new ApiError({
    status: response.status,
    code: `http_${response.status}`,
    message: response.statusText,
    requestId: response.headers.get("X-Request-ID"),
    retryAfter,
  });
}

/** Seconds to wait from a Retry-After header (delay-seconds or an HTTP date), or null. */
export function retryAfterSeconds(header) {
  if (!header) return null;
  const seconds = /^\s*\d+\s*$/.test(header)
    ? Number(header)
    : (Date.parse(header) - Date.now()) / 1000;
  return Number.isFinite(seconds) && seconds > 0 ? Math.ceil(seconds) : null;
}

/** GET (or other method) and parse JSON. */
export async function json(url, options) {
  const response = await request(url, options);
  return response.json();
}

/**
 * Read a response body with progress: onProgress(received, total or null).
 * @returns {Promise<Uint8Array>}
 */
export async function readAll(response, onProgress = () => {}) {
  const total = Number(response.headers.get("Content-Length")) || null;
  if (!response.body) return new Uint8Array(await response.arrayBuffer());
  const reader = response.body.getReader();
  const chunks = [];
  let received = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    received += value.length;
    onProgress(received, total);
  }
  const bytes = new Uint8Array(received);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.length;
  }
  return bytes;
}

/**
 * Server-Sent Events from `url` as an async iterator of {event, data, id}.
 * Ends when the server closes the stream; throws ApiError on HTTP or network errors.
 */
export async function* events(url, { signal } = {}) {
  const response = await request(url, { headers: { Accept: "text/event-stream" }, signal });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let message = { event: "message", data: [], id: null };
  try {
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (error) {
        if (error.name === "AbortError") throw error;
        throw new ApiError({ code: "network", message: String(error.message || error) });
      }
      if (chunk.done) return;
      buffer += chunk.value;
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop(); // an incomplete last line waits for more data
      for (const line of lines) {
        if (line === "") {
          if (message.data.length) {
            yield { event: message.event, data: message.data.join("\n"), id: message.id };
          }
          message = { event: "message", data: [], id: null };
          continue;
        }
        if (line.startsWith(":")) continue; // a comment (keep-alive)
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "data") message.data.push(value);
        else if (field === "event") message.event = value;
        else if (field === "id") message.id = value;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

/** Start a browser download of `url` (fetched with the API key) as `fallbackName`. */
export async function download(url, fallbackName) {
  const response = await request(url);
  const blob = await response.blob();
  const disposition = response.headers.get("Content-Disposition") || "";
  const match = /filename="?([^";]+)"?/i.exec(disposition);
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = match ? match[1] : fallbackName;
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
}

/** Does the page currently hold an API key? */
export function hasKey() {
  return Boolean(sessionKey);
}
