// The Linkis REST API as the console uses it: every answer is an envelope
// {method, status, message, data}; only status 0 is a success.
export const BASE = '/api/rest_j/v1/';

export class ApiError extends Error {
  constructor(message, httpStatus, status, data) {
    super(message);
    this.httpStatus = httpStatus; // HTTP status of the answer
    this.status = status; // the envelope's status (-1: not logged in)
    this.data = data;
  }
  /** The server has no such API (yet): HTTP 404, or its "no such API" envelope. */
  get missing() {
    return this.httpStatus === 404 || /no such API/i.test(this.message);
  }
}

let onUnauthorized = () => {};
export function setUnauthorizedHandler(f) {
  onUnauthorized = f;
}

export function url(path, query) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return BASE + path + (s ? `?${s}` : '');
}

export async function call(method, path, { query, body, quiet } = {}) {
  const init = { method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(url(path, query), init);
  } catch (e) {
    throw new ApiError(`${path}: the server cannot be reached (${e.message})`, 0, null);
  }
  let env;
  try {
    env = await resp.json();
  } catch {
    throw new ApiError(`${path}: HTTP ${resp.status}, not a Linkis answer`, resp.status, null);
  }
  if (env.status !== 0) {
    const err = new ApiError(env.message || `${path} failed (status ${env.status})`, resp.status, env.status, env.data);
    if (env.status === -1 && !quiet) onUnauthorized(err);
    throw err;
  }
  return env.data;
}

export const get = (path, query, opts = {}) => call('GET', path, { query, ...opts });
export const post = (path, body = {}, query, opts = {}) => call('POST', path, { body, query, ...opts });
