/**
 * The driver's tracking page (/driver/parcels/<id>), phone first.
 *
 * Tracking is off until the driver turns it on. While on: the device position
 * from watchPosition (high accuracy), the latest fix sent every `send_every_s` seconds
 * (and at once when the first fix comes), the screen kept awake where the Screen
 * Wake Lock API exists (position-sharing.js, as on the shift page). Off stops sending
 * and closes the socket. The status buttons call POST /api/parcels/<id>/status/ with
 * the page's XSRF token.
 *
 * Fixes taken while the socket is down wait in the offline queue (IndexedDB, one queue
 * per driver and parcel) and go out as one location_batch with this parcel's id once
 * it is live again (outbox.js; the shift page /driver does the same for all parcels).
 * An echoed fix with quality "low" shows the "weak GPS" warning.
 */

import { queueFor } from "./offline-queue.js";
import { Outbox } from "./outbox.js";
import { PositionSharing } from "./position-sharing.js";
import { pressStep, SharingFacts } from "./sharing-facts.js";
import { TrackingSocket } from "./tracking-socket.js";
import { dataJSON, showConnection, showStatus, toast } from "./ui.js";

const root = document.getElementById("driver");
const parcelId = Number(root.dataset.parcelId);
// The server's rules and texts (handlers/pages.py), not copies of them.
const rules = dataJSON(root, "rules");
const { labels, finished, texts, send_every_s: sendEvery } = rules;
const FINISHED = new Set(finished);
const SEND_EVERY_MS = sendEvery * 1000;
const $ = (id) => document.getElementById(id);
const toggle = $("tracking-toggle");
const stepButtons = [...document.querySelectorAll(".button-step")];

let status = root.dataset.status;
const facts = new SharingFacts();

// -- what the driver sees ------------------------------------------------------------

function showTracking() {
  const tracking = sharing.on;
  toggle.setAttribute("aria-pressed", String(tracking));
  toggle.classList.toggle("is-on", tracking);
  $("tracking-state").textContent = tracking ? "On" : "Off";
  if (!FINISHED.has(status)) $("tracking-help").textContent = tracking ? texts.help_on : texts.help_off;
}

function showFix(fix) {
  facts.fix(fix);
  const c = fix.coords;
  const parts = [];
  if (Number.isFinite(c.heading)) parts.push(`heading ${Math.round(c.heading)}°`);
  if (Number.isFinite(c.speed)) parts.push(`${Math.round(c.speed * 3.6)} km/h`);
  $("motion").textContent = parts.length ? parts.join(", ") : "Unknown";
}

function setStatus(next) {
  status = next;
  showStatus(status, labels);
  for (const button of stepButtons) button.disabled = !button.dataset.from.split(" ").includes(status);
  if (FINISHED.has(status)) {
    if (sharing.on) sharing.stop();
    toggle.disabled = true;
    $("tracking-help").textContent = texts.finished.replace("{status}", (labels[status] || status).toLowerCase());
  }
}

// -- sending the position -------------------------------------------------------------

function showQuality(message) {
  const weak = message.quality === "low" && Boolean(rules.weak_gps_text);
  $("weak-gps").hidden = !weak;
  $("weak-gps").textContent = weak ? rules.weak_gps_text : "";
}

const socket = new TrackingSocket({
  parcelId,
  wsUrl: root.dataset.wsUrl,
  onState(state, detail) {
    showConnection(state, detail);
    sharing.socketState(state, detail);
  },
  onStatus: (next) => { if (next !== status) setStatus(next); },
  onLocation: (location, message) => showQuality(message),
  onError: (text) => toast(text, "error", 8000),
});

const outbox = new Outbox({
  socket,
  queue: queueFor(`parcel:${root.dataset.driverId}:${parcelId}`, rules),
  parcelId,
  onWaiting: (count) => facts.waiting(count),
  onSent: (count, batched) => facts.sent(count, batched),
});

// -- on and off -----------------------------------------------------------------------------

// The Screen row, by the wake lock's state (wake-lock.js).
const WAKE_TEXTS = {
  on: "Kept on while tracking",
  unsupported: "May turn off (this browser cannot keep it on)",
  refused: "May turn off (not allowed here)",
};

const sharing = new PositionSharing({
  socket,
  outbox,
  sendEveryMs: SEND_EVERY_MS,
  texts: {
    denied: "Location permission is denied, so tracking is off. Allow location for this site in your " +
      "browser's settings, then turn tracking on again.",
    unavailable: "Your position is unavailable right now (no GPS signal?). Tracking stays on and sends " +
      "as soon as a position comes.",
    waiting: "Still waiting for a GPS position. Tracking stays on.",
    resumed: "Tracking resumed. It pauses while this page is in the background.",
    stopped: "Tracking stopped",
  },
  onChange: showTracking,
  onFix: showFix,
  onProblem: (text) => facts.problem(text),
  onWake(state, why) {
    $("wake-state").textContent = WAKE_TEXTS[state] || "May turn off";
    $("wake-state").title = why || "";
  },
});

toggle.addEventListener("click", () => sharing.toggle());

// -- the status buttons -------------------------------------------------------------------------

async function changeStatus(button) {
  for (const b of stepButtons) b.disabled = true;
  const next = await pressStep(parcelId, button, labels, (text) => { $("step-message").textContent = text; });
  setStatus(next ?? status);
}

for (const button of stepButtons) button.addEventListener("click", () => changeStatus(button));

showConnection("offline", "turn tracking on to connect");
showTracking();
outbox.countWaiting().catch(() => {});
