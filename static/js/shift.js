/**
 * The driver's day (/driver), phone first: docs/protocol.md, "The driver socket".
 *
 * One "Start my shift" toggle opens ONE /ws/driver/ socket and shares the device position
 * (watchPosition, high accuracy) with every active parcel at once: a fix without
 * parcel_id, at most every `send_every_s` seconds, with accuracy, heading and speed when
 * the device knows them. Fixes taken while the socket is not live wait in the offline
 * queue and go out as one location_batch on reconnect (outbox.js, offline-queue.js).
 * The screen is kept awake where the browser can (wake-lock.js), else the driver is told.
 *
 * The route list is the server's markup: on a status message, a change of the parcel set
 * (a new assignment, a parcel reassigned away or finished) or a button pressed here, the
 * `#deliveries` section is fetched again from /driver and swapped in, so the next-step
 * buttons and the route order follow the server's rules without a copy of them here.
 * The echoed broadcasts give each stop its ETA and the "weak GPS" warning.
 */

import { OfflineQueue } from "./offline-queue.js";
import { onLogout } from "./logout.js";
import { Outbox } from "./outbox.js";
import { loginUrl, TrackingSocket } from "./tracking-socket.js";
import { clock, dataJSON, duration, everySecond, showConnection, toast } from "./ui.js";
import { ScreenWakeLock } from "./wake-lock.js";

const $ = (id) => document.getElementById(id);
const root = $("shift");
// The server's rules and texts (handlers/pages.py), not copies of them.
const rules = dataJSON(root, "rules");
const { labels } = rules;
const SEND_EVERY_MS = rules.send_every_s * 1000;
const xsrfToken = document.querySelector('meta[name="xsrf-token"]').content;
const toggle = $("shift-toggle");

let onShift = false;
let watchId = null;
let sendTimer = null;
let fix = null; // the latest GeolocationPosition
let lastSent = null; // when a fix last went out (ms)
let lastEmit = 0; // when a fix was last handed to the outbox (ms)
let everLive = false; // the socket has been live during this shift
let active = [...document.querySelectorAll("#route [data-parcel-id]")].map((el) => Number(el.dataset.parcelId));
const live = new Map(); // parcel id → {eta, weak}: from the echoed broadcasts
const messages = new Map(); // parcel id → the latest step message, kept across list refreshes

// -- what the driver sees ---------------------------------------------------------------

function plural(n, one, many) {
  return `${n} ${n === 1 ? one : many}`;
}

function showShift() {
  toggle.classList.toggle("is-on", onShift);
  $("shift-label").textContent = onShift ? "End my shift" : "Start my shift";
  $("shift-help").textContent = onShift
    ? `Your shift is on: your position goes to the customers of every parcel below every ${rules.send_every_s} seconds.`
    : "Start your shift to share your position with the customers of every parcel below, through one connection.";
  $("sharing-for").textContent = onShift ? (active.length ? plural(active.length, "parcel", "parcels") : "No parcel yet")
    : "Not sharing";
}

function showProblem(text) {
  $("geo-message").textContent = text;
  $("geo-message").hidden = !text;
}

function showWaiting(count) {
  const box = $("queue-count");
  box.hidden = count === 0;
  box.textContent = `${plural(count, "position", "positions")} waiting to be sent`;
}

function showLastSent() {
  const el = $("last-sent");
  el.textContent = lastSent ? `${duration(Date.now() - lastSent)} ago` : "Not yet";
  el.title = lastSent ? `at ${clock(lastSent)}` : "";
}

function showWeak() {
  const weak = active.some((id) => live.get(id)?.weak);
  $("weak-gps").hidden = !weak;
  $("weak-gps").textContent = rules.weak_gps_text;
}

function etaText(eta) {
  if (!eta) return "";
  const km = eta.distance_m >= 1000 ? `${(eta.distance_m / 1000).toFixed(1)} km` : `${eta.distance_m} m`;
  const to = eta.to === "pickup" ? "the pickup" : "the destination";
  return `About ${duration(eta.seconds * 1000)} to ${to} (${km})`;
}

/** Each stop's ETA, weak-GPS mark and latest message: after every echo and list refresh. */
function showStops() {
  for (const el of document.querySelectorAll("[data-live-for]")) {
    const state = live.get(Number(el.dataset.liveFor));
    const parts = [];
    if (state?.eta) parts.push(etaText(state.eta));
    if (state?.weak) parts.push(rules.weak_gps_text);
    el.textContent = parts.join(" · ");
    el.hidden = !parts.length;
    el.classList.toggle("is-weak", Boolean(state?.weak));
  }
  for (const el of document.querySelectorAll("[data-message-for]")) {
    el.textContent = messages.get(Number(el.dataset.messageFor)) || "";
  }
  showWeak();
}

// -- the route list: the server's markup, fetched again when it changes -------------------

let refreshing = null;
let refreshAgain = false;

async function loadList() {
  const response = await fetch(location.pathname, { credentials: "same-origin", cache: "no-store" });
  if (response.redirected && new URL(response.url).pathname === "/login") return location.assign(loginUrl());
  if (!response.ok) throw new Error(`the server answered ${response.status}`);
  const page = new DOMParser().parseFromString(await response.text(), "text/html");
  const fresh = page.getElementById("deliveries");
  if (!fresh) return;
  const focused = document.activeElement && $("deliveries").contains(document.activeElement)
    ? document.activeElement.id : "";
  $("deliveries").replaceChildren(...[...fresh.childNodes].map((node) => document.importNode(node, true)));
  if (focused && $(focused)) $(focused).focus();
  showStops();
}

/** Fetch the list again (one fetch at a time; changes during it cause one more). */
function refreshList() {
  if (refreshing) {
    refreshAgain = true;
    return refreshing;
  }
  refreshing = loadList()
    .catch((error) => toast(`Could not update the list: ${error.message}`, "error", 8000))
    .finally(() => {
      refreshing = null;
      if (refreshAgain) {
        refreshAgain = false;
        refreshList();
      }
    });
  return refreshing;
}

function setActive(ids) {
  const before = active.join(",");
  active = ids.map(Number);
  for (const id of live.keys()) if (!active.includes(id)) live.delete(id);
  showShift();
  showWeak();
  const shown = [...document.querySelectorAll("#route [data-parcel-id]")].map((el) => el.dataset.parcelId).join(",");
  if (active.join(",") !== before || active.join(",") !== shown) refreshList();
}

// -- the status buttons -------------------------------------------------------------------

async function changeStatus(button) {
  const parcelId = Number(button.dataset.parcelId);
  const label = button.firstChild.textContent.trim();
  for (const b of button.parentElement.querySelectorAll("button")) b.disabled = true;
  button.classList.add("is-saving"); // stays in sight until the list comes back from the server
  messages.set(parcelId, `Saving “${label}”…`);
  showStops();
  try {
    const response = await fetch(`/api/parcels/${parcelId}/status/`, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-XSRFToken": xsrfToken },
      body: JSON.stringify({ status: button.dataset.status }),
    });
    if (response.status === 401) return location.assign(loginUrl());
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error || `the server answered ${response.status}`);
    messages.set(parcelId, `Marked as ${(labels[body.status] || body.status).toLowerCase()}.`);
  } catch (error) {
    messages.set(parcelId, `Could not change the status: ${error.message}.`);
  }
  await refreshList();
}

$("deliveries").addEventListener("click", (event) => {
  const button = event.target.closest(".button-step");
  if (button && !button.disabled) changeStatus(button);
});

// -- sending the position -------------------------------------------------------------------

const queue = new OfflineQueue(`driver:${root.dataset.driverId}`, {
  max: rules.max_offline_fixes,
  maxAgeMs: rules.max_offline_age_s ? rules.max_offline_age_s * 1000 : undefined, // absent: the server judges age
});

function sent() {
  lastSent = Date.now();
  showLastSent();
}

const socket = new TrackingSocket({
  path: "/ws/driver/",
  wsUrl: root.dataset.wsUrl,
  onState(state, detail) {
    showConnection(state, detail);
    if (state === "live") {
      outbox.flush();
      sendNow(true);
    }
    if (state === "error" && onShift) {
      stop();
      showProblem(`Your shift stopped: ${detail}`);
    }
  },
  onMessage(message) {
    if (message.type === "subscribed" || message.type === "parcels") setActive(message.parcels || []);
    else if (message.type === "geofence" && message.event === "enter") {
      toast(`Parcel #${message.parcel_id}: you are at the ${message.zone === "pickup" ? "pickup" : "destination"}`, "info");
    }
  },
  onLocation(location, message) {
    const id = Number(message.parcel_id);
    live.set(id, { eta: message.eta || null, weak: message.quality === "low" });
    showStops();
  },
  onStatus(status, message) {
    if (message.type === "status") refreshList();
  },
  onError: (text) => toast(text, "error", 8000),
});

const outbox = new Outbox({
  socket,
  queue,
  onWaiting: showWaiting,
  onSent(count, batched) {
    sent();
    if (batched) toast(`Sent ${plural(count, "position", "positions")} kept while offline`, "success");
  },
});

/** Hand the latest fix to the outbox: at most one every send_every_s (`force`: the socket just came back). */
function sendNow(force = false) {
  if (!onShift || !fix || !active.length) return;
  if (socket.state === "live") everLive = true;
  else if (!everLive && navigator.onLine !== false) return; // still opening: sent once live, not queued
  if (!force && lastEmit && Date.now() - lastEmit < SEND_EVERY_MS * 0.9) return;
  lastEmit = Date.now();
  const c = fix.coords;
  outbox.deliver({ lat: c.latitude, lng: c.longitude, accuracy: c.accuracy, heading: c.heading, speed: c.speed })
    .catch((error) => toast(`Could not keep a position: ${error.message}`, "error"));
}

function onFix(position) {
  const first = fix === null;
  fix = position;
  showProblem("");
  const c = position.coords;
  $("accuracy").textContent = Number.isFinite(c.accuracy) ? `±${Math.round(c.accuracy)} m` : "Unknown";
  if (first) sendNow();
}

function onFixError(error) {
  if (error.code === error.PERMISSION_DENIED) {
    stop();
    showProblem("Location permission is denied, so your shift is off. Allow location for this site in your " +
      "browser's settings, then start your shift again.");
  } else if (error.code === error.POSITION_UNAVAILABLE) {
    showProblem("Your position is unavailable right now (no GPS signal?). Your shift stays on and sends as soon " +
      "as a position comes.");
  } else {
    showProblem("Still waiting for a GPS position. Your shift stays on.");
  }
}

// -- the screen ---------------------------------------------------------------------------------

const wake = new ScreenWakeLock((state, why) => {
  $("wake-state").textContent = { on: "Kept on during your shift", off: "May turn off" }[state] || "May turn off";
  $("wake-state").title = why || "";
  $("wake-note").hidden = !(onShift && (state === "unsupported" || state === "refused"));
});

let wasHidden = false;
document.addEventListener("visibilitychange", () => {
  if (!onShift) return;
  if (document.visibilityState === "hidden") {
    wasHidden = true;
  } else {
    sendNow();
    if (wasHidden) toast("Your shift resumed. Positions pause while this page is in the background.", "warning", 8000);
    wasHidden = false;
  }
});

// -- on and off -----------------------------------------------------------------------------------

function start() {
  if (!("geolocation" in navigator)) {
    showProblem("This browser cannot share your location. Open this page in your phone's main browser.");
    return;
  }
  if (!window.isSecureContext) {
    showProblem("Location needs a secure (https) address. Open this site through its https address.");
    return;
  }
  showProblem("");
  onShift = true;
  fix = null;
  everLive = false;
  lastEmit = 0;
  showShift();
  socket.connect();
  watchId = navigator.geolocation.watchPosition(onFix, onFixError,
    { enableHighAccuracy: true, maximumAge: 0, timeout: 30000 });
  sendTimer = setInterval(() => sendNow(), SEND_EVERY_MS);
  wake.hold();
}

function stop() {
  onShift = false;
  showShift();
  if (watchId !== null) navigator.geolocation.clearWatch(watchId);
  watchId = null;
  clearInterval(sendTimer);
  sendTimer = null;
  if (socket.state !== "error") socket.disconnect(); // keep a refusal's "Error" in the pill
  wake.release();
  $("wake-note").hidden = true;
}

toggle.addEventListener("click", () => (onShift ? stop() : start()));

showConnection("offline", "start your shift to connect");
showShift();
showStops();
outbox.countWaiting().catch(() => {});
everySecond(showLastSent);
window.addEventListener("pagehide", () => { if (onShift) stop(); });
onLogout(() => { if (onShift) stop(); });
