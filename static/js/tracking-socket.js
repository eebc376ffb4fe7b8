/**
 * The tracking socket: the page's end of docs/protocol.md, "The tracking socket" (the counterpart of the
 * seed's useTrackingSocket hook).
 *
 * Before every connect it asks GET /api/token/ws/ (the login cookie) for a
 * fresh 60 s token, so no token is ever kept in localStorage. After an
 * unexpected close it reconnects with exponential backoff and jitter (1 s
 * doubling to 30 s) for as long as the page is open, and at once when the
 * browser comes back online. Close codes 4400 and 4403 stop it (the reason is
 * reported); 4401 fetches a new token and tries again. disconnect() stops it.
 *
 * States: "connecting", "live", "offline" (waiting to retry, or disconnected)
 * and "error" (stopped for a reason the person must see).
 *
 * The same class opens the driver's socket (`path: "/ws/driver/"`, no parcel), the
 * dispatcher's board (`path: "/ws/dispatch/"`) and a share link's socket (`token`: the
 * share token, used as it is; a 4401 then stops it, since no new one can be fetched).
 *
 * On a parcel's socket (/ws/tracking/) it keeps the parcel's epoch (from `subscribed`) and
 * the highest offset seen, and a reconnect asks for what it missed (`since` and `epoch`:
 * docs/protocol.md, "Recovery on reconnect"). Told `"recovered": true`, it passes the missed
 * messages on in order and the status of `subscribed` only once they are through (so a page
 * never steps back through the statuses it missed); told `"recovered": false`, it calls
 * `onGap()` so the page reloads its path from the history. A message whose offset it has
 * already seen is dropped. Against a server that sends no offsets it behaves as before.
 */

import { onLogout } from "./logout.js";

const TOKEN_URL = "/api/token/ws/";
const FIRST_DELAY = 1000;
const MAX_DELAY = 30000;
const STOP_CODES = new Set([4400, 4403]);
const TOKEN_CODE = 4401;

/** The socket base URL: PUBLIC_WS_URL when set, else the page's own origin as ws:// or wss://. */
export function socketBase(publicUrl) {
  if (publicUrl) return publicUrl.replace(/\/+$/, "").replace(/^http/, "ws");
  return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}`;
}

/** Where to send someone whose login has ended: the login page, then back here. */
export function loginUrl() {
  return `/login?next=${encodeURIComponent(location.pathname + location.search)}`;
}

export class TrackingSocket {
  /**
   * @param {object} options
   * @param {number} [options.parcelId] the parcel of a /ws/tracking/ socket
   * @param {string} [options.path] "/ws/tracking/" (default), "/ws/driver/" or "/ws/dispatch/"
   * @param {string} [options.token] a fixed token (a share link's); else one is fetched before every connect
   * @param {(message: object) => void} [options.onMessage] every other message (geofence, board, parcels, subscribed)
   * @param {string} [options.wsUrl] PUBLIC_WS_URL ("" → this page's origin)
   * @param {(location: {lat:number,lng:number,address:string}, message: object) => void} [options.onLocation]
   * @param {(status: string, message: object) => void} [options.onStatus] also called with the status in "subscribed"
   * @param {(text: string) => void} [options.onError] the server's error messages and the reason for stopping
   * @param {(state: string, detail: string) => void} [options.onState]
   * @param {() => void} [options.onGap] a reconnect could not be recovered: what came meanwhile may be missing
   */
  constructor({ parcelId, path = "/ws/tracking/", token = "", wsUrl = "", onLocation, onStatus, onError, onState,
    onMessage, onGap }) {
    this.parcelId = parcelId;
    this.path = path;
    this.fixedToken = token;
    this.onMessage = onMessage || (() => {});
    this.base = socketBase(wsUrl);
    this.onLocation = onLocation || (() => {});
    this.onStatus = onStatus || (() => {});
    this.onError = onError || (() => {});
    this.onState = onState || (() => {});
    this.onGap = onGap || (() => {});
    this.recovers = path === "/ws/tracking/"; // the other sockets carry no offsets
    this.epoch = null; // the parcel's epoch, from the last `subscribed` that had one
    this.offset = null; // the highest offset passed on (or known to be covered) in that epoch
    this.replay = null; // while the missed messages come: {until: the offset they end at, subscribed: the message}
    this.lastStatus = null; // the status last handed to onStatus
    this.state = "offline";
    this.ws = null;
    this.wanted = false; // connect() called and not disconnect()
    this.attempt = 0; // failed attempts since the last success
    this.retryTimer = null;
    this.lastError = "";
    this.tokenRetries = 0;
    this.generation = 0; // bumped by every open and disconnect, so a stale await stops
    this.onOnline = () => { if (this.wanted && this.state === "offline") this._retryNow(); };
    window.addEventListener("online", this.onOnline);
  }

  /** Open the socket (and keep it open) until disconnect(). */
  connect() {
    this.wanted = true;
    if (this.ws || this.state === "connecting") return;
    this._open();
  }

  /** Close the socket on purpose: no reconnection. */
  disconnect() {
    this.wanted = false;
    this.generation += 1;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(1000, "closed by the page");
    this._setState("offline", "");
  }

  /** Send a driver's position; false when the socket is not live. */
  sendLocationUpdate(lat, lng, extra = {}) {
    const message = { type: "location_update", lat, lng };
    if (this.parcelId !== undefined) message.parcel_id = this.parcelId;
    for (const key of ["address", "accuracy", "heading", "speed"]) {
      if (extra[key] !== undefined && extra[key] !== null && !Number.isNaN(extra[key])) message[key] = extra[key];
    }
    return this.send(message);
  }

  /** Send any message (a location_batch, say); false when the socket is not live. */
  send(message) {
    if (this.state !== "live" || !this.ws) return false;
    this.ws.send(JSON.stringify(message));
    return true;
  }

  async _open() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    const generation = ++this.generation;
    this._setState("connecting", this.attempt ? `attempt ${this.attempt + 1}` : "");
    let token;
    try {
      token = await this._token();
    } catch (error) {
      if (generation !== this.generation) return;
      if (error.status === 401) {
        this.wanted = false;
        this._setState("error", "your login has ended");
        location.assign(loginUrl());
        return;
      }
      this._scheduleRetry();
      return;
    }
    if (generation !== this.generation || !this.wanted) return;
    const query = new URLSearchParams({ token });
    if (this.parcelId !== undefined) query.set("parcel_id", this.parcelId);
    if (this.recovers && this.epoch !== null && this.offset !== null) { // a reconnect: ask for what was missed
      query.set("since", String(this.offset));
      query.set("epoch", this.epoch);
    }
    const url = `${this.base}${this.path}?${query}`;
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (error) {
      this._stop(`cannot open the tracking socket: ${error.message}`);
      return;
    }
    this.ws = ws;
    this.lastError = "";
    ws.addEventListener("message", (event) => this._message(ws, event));
    ws.addEventListener("close", (event) => this._closed(ws, event));
  }

  async _token() {
    if (this.fixedToken) return this.fixedToken;
    const response = await fetch(TOKEN_URL, { credentials: "same-origin", cache: "no-store" });
    if (!response.ok) {
      const error = new Error(`token request failed: ${response.status}`);
      error.status = response.status;
      throw error;
    }
    return (await response.json()).access;
  }

  _message(ws, event) {
    if (ws !== this.ws) return;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    if (message.type === "subscribed" || message.type === "board") { // the board's snapshot is its "subscribed"
      this.attempt = 0;
      this.tokenRetries = 0;
      const recovered = this.recovers && message.type === "subscribed" ? this._subscribed(message) : false;
      this._setState("live", "");
      if (message.status && !recovered) this._status(message.status, message);
      this.onMessage(message);
      if (this.recovers && message.recovered === false) this.onGap();
      return;
    }
    if (!this._fresh(message)) return;
    if (message.type === "location_update" && message.location) {
      this.onLocation(message.location, message);
    } else if (message.type === "status") {
      this._status(message.status, message);
    } else if (message.type === "error") {
      this.lastError = String(message.message || "error");
      if (this.state === "live") this.onError(this.lastError);
    } else {
      this.onMessage(message);
    }
    this._replayed(message);
  }

  /** Take a parcel's `subscribed`: its epoch and offset. True when it recovered what was missed,
   * whose messages follow (docs/protocol.md, "Recovery on reconnect"). */
  _subscribed(message) {
    this.replay = null;
    const epoch = typeof message.epoch === "string" ? message.epoch : null;
    const offset = Number.isInteger(message.offset) ? message.offset : null;
    if (epoch === null || offset === null) { // a server without offsets: nothing to keep
      this.epoch = this.offset = null;
      return false;
    }
    if (message.recovered === true && epoch === this.epoch && this.offset !== null) {
      if (offset > this.offset) this.replay = { until: offset, subscribed: message };
      else if (message.status) this._status(message.status, message); // nothing was missed
      return true;
    }
    // A first connect, or not recovered: the snapshot that follows (no offset: it is no message
    // of the stream) is the latest, and everything up to `offset` is in the history the page loads.
    this.epoch = epoch;
    this.offset = offset;
    return false;
  }

  /** Whether a message is new: one whose offset was already seen is dropped (offsets may skip:
   * a share link's viewer is not sent what it may not see). */
  _fresh(message) {
    if (!this.recovers || this.offset === null || !Number.isInteger(message.offset)) return true;
    if (message.offset <= this.offset) return false;
    this.offset = message.offset;
    return true;
  }

  /** After the last missed message, the status `subscribed` said, if the missed ones did not end there. */
  _replayed(message) {
    const replay = this.replay;
    if (!replay || !Number.isInteger(message.offset) || message.offset < replay.until) return;
    this.replay = null;
    const { status } = replay.subscribed;
    if (status && status !== this.lastStatus) this._status(status, replay.subscribed);
  }

  _status(status, message) {
    this.lastStatus = status;
    this.onStatus(status, message);
  }

  _closed(ws, event) {
    if (ws !== this.ws) return; // an old socket, or disconnect()
    this.ws = null;
    if (!this.wanted) return;
    if (STOP_CODES.has(event.code)) {
      this._stop(this.lastError || event.reason || "the server refused this socket");
    } else if (event.code === TOKEN_CODE && this.fixedToken) {
      this._stop(this.lastError || "this link is no longer valid");
    } else if (event.code === TOKEN_CODE && this.tokenRetries < 1) {
      this.tokenRetries += 1;
      this._open(); // the token expired on the way: get a new one at once
    } else {
      this._scheduleRetry();
    }
  }

  _stop(reason) {
    this.wanted = false;
    this._setState("error", reason);
    this.onError(reason);
  }

  _scheduleRetry() {
    if (!this.wanted) return;
    const ceiling = Math.min(MAX_DELAY, FIRST_DELAY * 2 ** this.attempt);
    const delay = Math.round(ceiling / 2 + Math.random() * (ceiling / 2)); // jitter: half to all of it
    this.attempt += 1;
    this._setState("offline", `retrying in ${Math.ceil(delay / 1000)} s`);
    this.retryTimer = setTimeout(() => this._open(), delay);
  }

  _retryNow() {
    this.attempt = 0;
    this._open();
  }

  _setState(state, detail) {
    this.state = state;
    this.onState(state, detail);
  }
}

/**
 * A watching page's sockets live as long as the page is shown: connected now, closed when
 * the page is left or its "Log out" form is sent (logout.js says why), connected again when
 * the browser brings the page back from its cache. `sockets()`: the page's sockets now (a
 * parcel that finished has left the client's map).
 */
export function connectWhileShown(sockets) {
  const connectAll = () => { for (const socket of sockets()) socket.connect(); };
  const disconnectAll = () => { for (const socket of sockets()) socket.disconnect(); };
  connectAll();
  window.addEventListener("pagehide", disconnectAll);
  onLogout(disconnectAll);
  window.addEventListener("pageshow", (event) => { if (event.persisted) connectAll(); });
}
