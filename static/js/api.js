/**
 * The pages' JSON API calls with the login cookie: unsafe methods carry the page's XSRF
 * token, a refusal becomes an Error with the server's `{"error"}` message, and a login
 * that has ended (401) sends the person to the login page.
 */

import { loginUrl } from "./tracking-socket.js";

const xsrfToken = () => document.querySelector('meta[name="xsrf-token"]')?.content || "";

/** `method` on `url` with `body` (JSON); the answer's JSON (null for 204). */
export async function apiCall(method, url, body = undefined) {
  const response = await fetch(url, {
    method,
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-XSRFToken": xsrfToken() },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) {
    location.assign(loginUrl());
    throw new Error("your login has ended");
  }
  if (response.status === 204) return null;
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(answer.error || `the server answered ${response.status}`);
  return answer;
}

/** Move a parcel on (its driver's status buttons); the parcel as it now is. */
export function setParcelStatus(parcelId, status, details = {}) {
  return apiCall("POST", `/api/parcels/${parcelId}/status/`, { status, ...details });
}
