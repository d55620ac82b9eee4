// The dashboard reads only the public API (Stats API v2 and realtime) with the key from the
// page's fragment, so its numbers are the API's and it can do nothing a key could not.

export class ApiError extends Error {
  constructor(status, message, retryAfter) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

async function call(url, key, init) {
  let response;
  try {
    response = await fetch(url, {
      ...init,
      headers: { Authorization: `Bearer ${key}`, ...(init && init.headers) },
    });
  } catch (error) {
    throw new ApiError(0, `network error: ${error.message}`);
  }
  const text = await response.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = text;
  }
  if (!response.ok) {
    const message = (body && body.error) || `HTTP ${response.status}`;
    const retry = Number(response.headers.get("retry-after")) || 0;
    throw new ApiError(response.status, message, retry);
  }
  return body;
}

export function statsQuery(key, body) {
  return call("/api/v2/query", key, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
}

export function liveSummary(key, site) {
  return call(`/api/v1/stats/realtime/live?site_id=${encodeURIComponent(site)}`, key);
}

// The key lives in the URL fragment (#key=...): browsers never send a fragment to a server,
// so it stays out of access logs and Referer headers, and a link with it is a share link.
export function keyFromHash() {
  const match = /(?:^#|&)key=([^&]*)/.exec(location.hash);
  return match ? decodeURIComponent(match[1]) : "";
}
