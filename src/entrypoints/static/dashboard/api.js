// REST client: the API key (if any) goes in X-API-Key; errors carry the API's error code.

const KEY_STORAGE = "defi-realtime.apiKey";

/** The API key entered in this tab (sessionStorage: gone when the tab closes). */
export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

export class ApiError extends Error {
  constructor(status, code, message, withKey) {
    super(message);
    this.status = status;
    this.code = code;
    this.withKey = withKey; // whether the request carried a key
  }
}

async function request(method, path, body) {
  const headers = { Accept: "application/json" };
  const key = apiKey();
  if (key) headers["X-API-Key"] = key;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  const answer = await response.json().catch(() => null);
  if (!response.ok) {
    const error = answer && answer.error ? answer.error : {};
    const code = error.code || "http_error";
    throw new ApiError(response.status, code, error.message || response.statusText, Boolean(key));
  }
  return answer;
}

/** GET a path with query parameters (empty ones left out). */
export function get(path, params = {}) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== "" && value !== null && value !== undefined) query.set(name, String(value));
  }
  const text = query.toString();
  return request("GET", text ? `${path}?${text}` : path);
}

export function post(path, body) {
  return request("POST", path, body);
}
