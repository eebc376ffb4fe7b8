/**
 * The driver's page for one parcel (/driver/parcels/<id>), phone first.
 *
 * Its tracking toggle IS the driver's shift (driver-shift.js, the same as /driver's "Start my
 * shift"): on, the position goes out over the route socket /ws/driver/ to every active
 * parcel, this one included, every `send_every_s` seconds (at once when the first fix comes),
 * with the screen kept awake where the Screen Wake Lock API exists. A shift started on
 * /driver is still on when this page opens, and turning tracking off here ends the shift on
 * every page. "Sharing for" says whom the shift reaches, this parcel first.
 *
 * The route socket carries this parcel's status changes and echoed fixes (an echo with
 * quality "low" shows the "weak GPS" warning). When the parcel leaves the driver's active
 * set, its status is read again: finished, the page says so and the shift goes on; no longer
 * this driver's (reassigned), the page says tracking stopped for it and the toggle is off.
 * The status buttons call POST /api/parcels/<id>/status/ with the page's XSRF token;
 * "Delivered" asks first (deliver-confirm.js). Fixes taken while the socket is down wait in
 * the shift's offline queue and go out as one location_batch once it is live again.
 */

import { apiCall } from "./api.js";
import { confirmDelivery, destinationOf } from "./deliver-confirm.js";
import { askFailure } from "./fail-dialog.js";
import { Shift } from "./driver-shift.js";
import { pressStep, SharingFacts } from "./sharing-facts.js";
import { dataJSON, localTimes, plural, showConnection, showStatus, toast } from "./ui.js";

const root = document.getElementById("driver");
const parcelId = Number(root.dataset.parcelId);
// The server's rules and texts (handlers/pages.py), not copies of them.
const rules = dataJSON(root, "rules");
const { labels, finished, texts } = rules;
const FINISHED = new Set(finished);
const $ = (id) => document.getElementById(id);
const toggle = $("tracking-toggle");
const stepButtons = [...document.querySelectorAll(".button-step")];

let status = root.dataset.status;
let lost = false; // the parcel was reassigned away while this page was open
const facts = new SharingFacts();

// -- what the driver sees ------------------------------------------------------------

function finishedText(on) {
  return (on ? texts.finished_on_shift : texts.finished).replace("{status}", (labels[status] || status).toLowerCase());
}

/** The toggle (the shift's, for this parcel), its help and "Sharing for". */
function showTracking() {
  const on = shift.on && !lost;
  toggle.setAttribute("aria-pressed", String(on));
  toggle.classList.toggle("is-on", on);
  $("tracking-state").textContent = on ? "On" : "Off";
  // Nothing to start for a finished or lost parcel; a shift that is on can still be ended here.
  toggle.disabled = lost || (FINISHED.has(status) && !shift.on);
  if (lost) $("tracking-help").textContent = texts.lost_help;
  else if (FINISHED.has(status)) $("tracking-help").textContent = finishedText(shift.on);
  else $("tracking-help").textContent = shift.on ? texts.help_on : texts.help_off;
  const others = shift.active.filter((id) => id !== parcelId).length;
  let sharingFor = "Not sharing";
  if (shift.on && shift.active.includes(parcelId)) {
    sharingFor = others ? `This parcel and ${plural(others, "other", "others")}` : "This parcel";
  } else if (shift.on) {
    sharingFor = others ? `${plural(others, "other parcel", "other parcels")}, not this one` : "No parcel yet";
  }
  $("sharing-for").textContent = sharingFor;
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
  showTracking();
}

function showQuality(message) {
  const weak = message.quality === "low" && Boolean(rules.weak_gps_text);
  $("weak-gps").hidden = !weak;
  $("weak-gps").textContent = weak ? rules.weak_gps_text : "";
}

/** This parcel left the driver's active set: finished (read its status again), or reassigned away. */
async function parcelLeft() {
  if (FINISHED.has(status) || lost) return;
  let parcel = null;
  try {
    parcel = await apiCall("GET", `/api/parcels/${parcelId}/`);
  } catch {
    parcel = null; // 404: no longer this driver's to see
  }
  if (parcel && String(parcel.driver_id) === root.dataset.driverId) {
    if (parcel.status !== status) setStatus(parcel.status);
    return;
  }
  lost = true;
  for (const button of stepButtons) button.disabled = true;
  showConnection("error", texts.lost.replace(/^[^:]*:\s*/, ""));
  facts.problem(texts.lost);
  showTracking();
}

// -- the shift: the same on every driver page (driver-shift.js) --------------------------

// The Screen row, by the wake lock's state (wake-lock.js).
const WAKE_TEXTS = {
  on: "Kept on while tracking",
  unsupported: "May turn off (this browser cannot keep it on)",
  refused: "May turn off (not allowed here)",
};

const shift = new Shift({
  driverId: root.dataset.driverId,
  wsUrl: root.dataset.wsUrl,
  rules,
  facts,
  onState: (state, detail) => { if (!lost) showConnection(state, detail); },
  onParcels(ids) {
    showTracking();
    if (!ids.includes(parcelId)) parcelLeft();
  },
  onChange: showTracking,
  onFix: showFix,
  onProblem: (text) => facts.problem(lost ? texts.lost : text),
  onWake(state, why) {
    $("wake-state").textContent = WAKE_TEXTS[state] || "May turn off";
    $("wake-state").title = why || "";
  },
  socket: {
    onStatus(next, message) {
      if (Number(message.parcel_id) === parcelId && next !== status) setStatus(next);
    },
    onLocation(location, message) {
      if (Number(message.parcel_id) === parcelId) showQuality(message);
    },
    onError: (text) => toast(text, "error", 8000),
  },
});

toggle.addEventListener("click", () => shift.toggle());

// -- the status buttons -------------------------------------------------------------------------

async function changeStatus(button) {
  if (button.dataset.status === "delivered") {
    if (!(await confirmDelivery({ parcelId, to: destinationOf(root), from: shift.lastGood, rules }))) return;
  }
  let details = {};
  if (button.dataset.status === "failed") {
    details = await askFailure({ parcelId, rules });
    if (!details) return;
  }
  for (const b of stepButtons) b.disabled = true;
  const next = await pressStep(parcelId, button, labels, (text) => { $("step-message").textContent = text; }, details);
  setStatus(next ?? status);
}

for (const button of stepButtons) button.addEventListener("click", () => changeStatus(button));

localTimes(root);
showConnection("offline", "turn tracking on to connect");
showTracking();
shift.outbox.countWaiting().catch(() => {});
shift.resume();
