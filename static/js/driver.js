/**
 * The driver's tracking page (/driver/parcels/<id>), phone first.
 *
 * Tracking is off until the driver turns it on. While on: the device position
 * from watchPosition (high accuracy), the latest fix sent every 5 seconds (and
 * at once when the first fix comes), the screen kept awake where the Screen
 * Wake Lock API exists. Off stops sending and closes the socket. The status
 * buttons call POST /api/parcels/<id>/status/ with the page's XSRF token.
 *
 * Fixes taken while the socket is down wait in the offline queue (IndexedDB, one queue
 * per driver and parcel) and go out as one location_batch with this parcel's id once
 * it is live again (outbox.js; the shift page /driver does the same for all parcels).
 * An echoed fix with quality "low" shows the "weak GPS" warning.
 */

import { onLogout } from "./logout.js";
import { OfflineQueue } from "./offline-queue.js";
import { Outbox } from "./outbox.js";
import { loginUrl, TrackingSocket } from "./tracking-socket.js";
import { clock, dataJSON, duration, everySecond, showConnection, showStatus, toast } from "./ui.js";

const root = document.getElementById("driver");
const parcelId = Number(root.dataset.parcelId);
// The server's rules and texts (handlers/pages.py), not copies of them.
const rules = dataJSON(root, "rules");
const { labels, finished, texts, send_every_s: sendEvery } = rules;
const FINISHED = new Set(finished);
const SEND_EVERY_MS = sendEvery * 1000;
const xsrfToken = document.querySelector('meta[name="xsrf-token"]').content;
const $ = (id) => document.getElementById(id);
const toggle = $("tracking-toggle");
const stepButtons = [...document.querySelectorAll(".button-step")];

let status = root.dataset.status;
let tracking = false;
let watchId = null;
let sendTimer = null;
let fix = null; // the latest GeolocationPosition
let lastSent = null; // when the latest fix went out (ms)
let everLive = false; // the socket has been live since tracking was turned on
let wakeLock = null;
let wasHidden = false;

// -- what the driver sees ------------------------------------------------------------

function showTracking() {
  toggle.setAttribute("aria-pressed", String(tracking));
  toggle.classList.toggle("is-on", tracking);
  $("tracking-state").textContent = tracking ? "On" : "Off";
  if (!FINISHED.has(status)) $("tracking-help").textContent = tracking ? texts.help_on : texts.help_off;
}

function showProblem(text) {
  const box = $("geo-message");
  box.textContent = text;
  box.hidden = !text;
}

function showFix() {
  const c = fix.coords;
  $("accuracy").textContent = Number.isFinite(c.accuracy) ? `±${Math.round(c.accuracy)} m` : "Unknown";
  const parts = [];
  if (Number.isFinite(c.heading)) parts.push(`heading ${Math.round(c.heading)}°`);
  if (Number.isFinite(c.speed)) parts.push(`${Math.round(c.speed * 3.6)} km/h`);
  $("motion").textContent = parts.length ? parts.join(", ") : "Unknown";
}

function showLastSent() {
  const el = $("last-sent");
  el.textContent = lastSent ? `${duration(Date.now() - lastSent)} ago` : "Not yet";
  el.title = lastSent ? `at ${clock(lastSent)}` : "";
}

function setStatus(next) {
  status = next;
  showStatus(status, labels);
  for (const button of stepButtons) button.disabled = !button.dataset.from.split(" ").includes(status);
  if (FINISHED.has(status)) {
    if (tracking) stop();
    toggle.disabled = true;
    $("tracking-help").textContent = texts.finished.replace("{status}", (labels[status] || status).toLowerCase());
  }
}

// -- sending the position -------------------------------------------------------------

function sendNow() {
  if (!tracking || !fix) return;
  if (socket.state === "live") everLive = true;
  else if (!everLive && navigator.onLine !== false) return; // still opening: sent once live, not queued
  const c = fix.coords;
  outbox.deliver({ lat: c.latitude, lng: c.longitude, accuracy: c.accuracy, heading: c.heading, speed: c.speed })
    .catch((error) => toast(`Could not keep a position: ${error.message}`, "error"));
}

function showWaiting(count) {
  const box = $("queue-count");
  box.hidden = count === 0;
  box.textContent = `${count} ${count === 1 ? "position" : "positions"} waiting to be sent`;
}

function showQuality(message) {
  const weak = message.quality === "low" && Boolean(rules.weak_gps_text);
  $("weak-gps").hidden = !weak;
  $("weak-gps").textContent = weak ? rules.weak_gps_text : "";
}

function onFix(position) {
  const first = fix === null;
  fix = position;
  showProblem("");
  showFix();
  if (first) sendNow();
}

function onFixError(error) {
  if (error.code === error.PERMISSION_DENIED) {
    stop();
    showProblem("Location permission is denied, so tracking is off. Allow location for this site in your " +
      "browser's settings, then turn tracking on again.");
  } else if (error.code === error.POSITION_UNAVAILABLE) {
    showProblem("Your position is unavailable right now (no GPS signal?). Tracking stays on and sends " +
      "as soon as a position comes.");
  } else {
    showProblem("Still waiting for a GPS position. Tracking stays on.");
  }
}

// -- the screen wake lock ---------------------------------------------------------------

async function keepAwake() {
  if (!("wakeLock" in navigator)) {
    $("wake-state").textContent = "May turn off (this browser cannot keep it on)";
    return;
  }
  try {
    wakeLock = await navigator.wakeLock.request("screen");
    $("wake-state").textContent = "Kept on while tracking";
    wakeLock.addEventListener("release", () => {
      wakeLock = null;
      $("wake-state").textContent = "May turn off";
    });
  } catch (error) {
    $("wake-state").textContent = "May turn off (not allowed here)";
    $("wake-state").title = error.message || "";
  }
}

function letSleep() {
  if (wakeLock) wakeLock.release().catch(() => {});
  wakeLock = null;
}

document.addEventListener("visibilitychange", () => {
  if (!tracking) return;
  if (document.visibilityState === "hidden") {
    wasHidden = true;
  } else {
    keepAwake(); // the browser released the lock when the page was hidden
    sendNow();
    if (wasHidden) toast("Tracking resumed. It pauses while this page is in the background.", "warning", 8000);
    wasHidden = false;
  }
});

// -- on and off -----------------------------------------------------------------------------

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
  tracking = true;
  fix = null;
  everLive = false;
  showTracking();
  socket.connect();
  watchId = navigator.geolocation.watchPosition(onFix, onFixError, { enableHighAccuracy: true, maximumAge: 0, timeout: 30000 });
  sendTimer = setInterval(() => sendNow(), SEND_EVERY_MS);
  keepAwake();
}

function stop() {
  tracking = false;
  showTracking();
  if (watchId !== null) navigator.geolocation.clearWatch(watchId);
  watchId = null;
  clearInterval(sendTimer);
  sendTimer = null;
  if (socket.state !== "error") socket.disconnect(); // keep a refusal's "Error" in the pill
  letSleep();
}

const socket = new TrackingSocket({
  parcelId,
  wsUrl: root.dataset.wsUrl,
  onState(state, detail) {
    showConnection(state, detail);
    if (state === "live") {
      outbox.flush(); // what waited while offline goes first, then the latest fix
      sendNow();
    }
    if (state === "error" && tracking) {
      stop();
      showProblem(`Tracking stopped: ${detail}`);
    }
  },
  onStatus: (next) => { if (next !== status) setStatus(next); },
  onLocation: (location, message) => showQuality(message),
  onError: (text) => toast(text, "error", 8000),
});

// Without the server's limit for it (rules.max_offline_fixes), nothing is queued: fixes taken offline are dropped.
const queue = rules.max_offline_fixes
  ? new OfflineQueue(`parcel:${root.dataset.driverId}:${parcelId}`, {
    max: rules.max_offline_fixes,
    maxAgeMs: rules.max_offline_age_s ? rules.max_offline_age_s * 1000 : undefined, // absent: the server judges age
  })
  : null;
const outbox = new Outbox({
  socket,
  queue,
  parcelId,
  onWaiting: showWaiting,
  onSent(count, batched) {
    lastSent = Date.now();
    showLastSent();
    if (batched) toast(`Sent ${count} ${count === 1 ? "position" : "positions"} kept while offline`, "success");
  },
});

toggle.addEventListener("click", () => (tracking ? stop() : start()));

// -- the status buttons -------------------------------------------------------------------------

async function changeStatus(button) {
  const label = button.textContent.trim();
  for (const b of stepButtons) b.disabled = true;
  $("step-message").textContent = `Saving “${label}”…`;
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
    setStatus(body.status);
    $("step-message").textContent = `Marked as ${(labels[body.status] || body.status).toLowerCase()}.`;
  } catch (error) {
    setStatus(status);
    $("step-message").textContent = `Could not change the status: ${error.message}.`;
  }
}

for (const button of stepButtons) button.addEventListener("click", () => changeStatus(button));

showConnection("offline", "turn tracking on to connect");
showTracking();
everySecond(showLastSent);
outbox.countWaiting().catch(() => {});
window.addEventListener("pagehide", () => { if (tracking) stop(); });
onLogout(() => { if (tracking) stop(); });
