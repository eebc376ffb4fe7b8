/**
 * The driver's day (/driver), phone first: docs/protocol.md, "The driver socket".
 *
 * One "Start my shift" toggle opens ONE /ws/driver/ socket and shares the device position
 * (watchPosition, high accuracy) with every active parcel at once: a fix without
 * parcel_id, at most every `send_every_s` seconds, with accuracy, heading and speed when
 * the device knows them. Fixes taken while the socket is not live wait in the offline
 * queue and go out as one location_batch on reconnect (outbox.js, offline-queue.js).
 * The screen is kept awake where the browser can (wake-lock.js), else the driver is told.
 * The shift is driver-shift.js, the same on the parcel page: opening a parcel keeps it
 * on, and turning it off there ends it here too.
 *
 * The list is the server's markup, in the order the parcels came in (the server works out
 * no driving order, and the page says so): on a status message, a change of the parcel set
 * (a new assignment, a parcel reassigned away or finished) or a button pressed here, the
 * `#deliveries` section is fetched again from /driver and swapped in, so the next-step
 * buttons follow the server's rules without a copy of them here. "Delivered" asks first
 * (deliver-confirm.js). The echoed broadcasts give each stop its ETA and the "weak GPS" warning.
 */

import { etaForStop, placeName } from "./eta.js";
import { confirmDelivery, destinationOf } from "./deliver-confirm.js";
import { askFailure } from "./fail-dialog.js";
import { Shift } from "./driver-shift.js";
import { pressStep, SharingFacts } from "./sharing-facts.js";
import { loginUrl } from "./tracking-socket.js";
import { dataJSON, localTimes, plural, showConnection, toast } from "./ui.js";

const $ = (id) => document.getElementById(id);
const root = $("shift");
// The server's rules and texts (handlers/pages.py), not copies of them.
const rules = dataJSON(root, "rules");
const { labels } = rules;
const toggle = $("shift-toggle");

const facts = new SharingFacts();
let active = [...document.querySelectorAll("#route [data-parcel-id]")].map((el) => Number(el.dataset.parcelId));
const live = new Map(); // parcel id → {eta, weak}: from the echoed broadcasts
const messages = new Map(); // parcel id → the latest step message, kept across list refreshes

// -- what the driver sees ---------------------------------------------------------------

function showShift() {
  const onShift = shift.on;
  toggle.classList.toggle("is-on", onShift);
  $("shift-label").textContent = onShift ? "End my shift" : "Start my shift";
  $("shift-help").textContent = onShift
    ? `Your shift is on: your position goes to the customers of every parcel below every ${rules.send_every_s} seconds.`
    : "Start your shift to share your position with the customers of every parcel below, through one connection.";
  $("sharing-for").textContent = onShift ? (active.length ? plural(active.length, "parcel", "parcels") : "No parcel yet")
    : "Not sharing";
}

function showWeak() {
  const weak = active.some((id) => live.get(id)?.weak);
  $("weak-gps").hidden = !weak;
  $("weak-gps").textContent = rules.weak_gps_text;
}

/** Each stop's ETA, weak-GPS mark and latest message: after every echo and list refresh. */
function showStops() {
  for (const el of document.querySelectorAll("[data-live-for]")) {
    const state = live.get(Number(el.dataset.liveFor));
    const parts = [];
    if (etaForStop(state?.eta)) parts.push(etaForStop(state.eta));
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
  localTimes($("deliveries"));
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
  if (button.dataset.status === "delivered") {
    const to = destinationOf(button.closest(".route-stop"));
    if (!(await confirmDelivery({ parcelId, to, from: shift.lastGood, rules }))) return;
  }
  let details = {};
  if (button.dataset.status === "failed") {
    details = await askFailure({ parcelId, rules });
    if (!details) return;
  }
  for (const b of button.parentElement.querySelectorAll("button")) b.disabled = true;
  button.classList.add("is-saving"); // stays in sight until the list comes back from the server
  await pressStep(parcelId, button, labels, (text) => {
    messages.set(parcelId, text);
    showStops();
  }, details);
  await refreshList();
}

$("deliveries").addEventListener("click", (event) => {
  const button = event.target.closest(".button-step");
  if (button && !button.disabled) changeStatus(button);
});

// -- the shift: the same on every driver page (driver-shift.js) ----------------------------------

const shift = new Shift({
  driverId: root.dataset.driverId,
  wsUrl: root.dataset.wsUrl,
  rules,
  facts,
  onState: showConnection,
  onParcels: setActive,
  onChange: showShift,
  onFix: (position) => facts.fix(position),
  onWake(state, why) { // the screen
    $("wake-state").textContent = { on: "Kept on during your shift", off: "May turn off" }[state] || "May turn off";
    $("wake-state").title = why || "";
    $("wake-note").hidden = !(shift.on && (state === "unsupported" || state === "refused"));
  },
  socket: {
    onMessage(message) {
      if (message.type === "geofence" && message.event === "enter") {
        toast(`Parcel #${message.parcel_id}: you are at ${placeName(message.zone)}`, "info");
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
  },
});

toggle.addEventListener("click", () => shift.toggle());

localTimes($("deliveries"));
showConnection("offline", "start your shift to connect");
showShift();
showStops();
shift.outbox.countWaiting().catch(() => {});
shift.resume();
