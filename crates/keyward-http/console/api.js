// The console's one way to the server: the public API, with the key in `x-api-key`.
// Everything the console shows, a curl with the same key can get.

/** A non-2xx answer: the API's error envelope (API.md §Errors). */
export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || 'HTTP_ERROR';
    this.details = error.details || {};
    this.requestId = body && body.request_id;
  }
}

/** A client of the API for one key. `onUnauthorized(error)` runs on every 401. */
export function client(key, onUnauthorized) {
  async function call(method, path, body) {
    const init = { method, headers: { 'x-api-key': key }, credentials: 'omit', cache: 'no-store' };
    if (body !== undefined) {
      init.headers['content-type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    const text = await response.text();
    const json = text ? JSON.parse(text) : null;
    if (!response.ok) {
      const error = new ApiError(response.status, json);
      if (response.status === 401 && onUnauthorized) onUnauthorized(error);
      throw error;
    }
    return json;
  }
  return {
    get: (path) => call('GET', path),
    post: (path, body) => call('POST', path, body),
    patch: (path, body) => call('PATCH', path, body),
    del: (path) => call('DELETE', path),
  };
}

/** `path` with the query parameters that are set. */
export function withQuery(path, params) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== '') query.set(name, String(value));
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}
