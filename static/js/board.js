/**
 * The dispatcher's live board on /dispatch (docs/protocol.md, "The dispatcher's board").
 *
 * One /ws/dispatch/ socket: a `board` snapshot of every active parcel, then each parcel's
 * location_update (at most one a second) and status (with driver_id). A truck is a driver
 * with at least one active parcel: one marker per driver, labelled with the driver's name
 * and parcel numbers, moved to the newest good fix of any of its parcels (a fix with
 * quality "low" counts as a report but does not move it), added when a parcel is assigned,
 * removed when its last parcel is finished or reassigned away. A truck that has not
 * reported for `stale_after_s` seconds turns grey with a red ring, and says so in its
 * label and in the list beside the map (quiet trucks first). Each parcel of a truck on
 * the map has its pickup and destination pinned (the board sends them), and the map is
 * framed over the trucks and their pins, so one truck is not shown alone on a bare street.
 *
 * Each marker's element carries data-driver-id, data-parcels, data-lat/-lng and
 * data-stale (a pin: data-parcel-id and data-end), so browser tests can read what is drawn.
 */

import { baseMap, truckMarker } from "./fleet-map.js";
import { addLegend, ICONS, marker } from "./markers.js";
import { connectWhileShown, TrackingSocket } from "./tracking-socket.js";
import { dataJSON, duration, everySecond, plural, showConnection, toast } from "./ui.js";

const root = document.getElementById("board");
// The server's rules (handlers/pages.py), not copies of them.
const rules = dataJSON(root, "rules");
const FINISHED = new Set(rules.finished);
const STALE_AFTER_MS = rules.stale_after_s * 1000;
const names = dataJSON(root, "drivers") || {}; // driver id (string) → name
const list = document.getElementById("truck-list");
const summary = document.getElementById("board-summary");

const map = baseMap("board-map", root);
addLegend(map);
// parcel id → {status, driverId, good: {lat, lng, at} | null, reportAt: ms | null, ends: {pickup, destination} | null}
const parcels = new Map();
const byDriver = new Map(); // driver id → Set of its active parcel ids
const trucks = new Map(); // driver id → {marker, item, stale, label}
const pins = new Map(); // parcel id → [pickup marker, destination marker]
let boardSeen = false;

function driverName(driverId) {
  return names[driverId] || `Driver #${driverId}`;
}

function time(iso) {
  const t = iso ? Date.parse(iso) : NaN;
  return Number.isFinite(t) ? t : null;
}

// -- what a truck is, from its parcels ---------------------------------------------------

function setParcel(id, parcel) {
  const before = parcels.get(id);
  if (before && before.driverId !== null) byDriver.get(before.driverId)?.delete(id);
  if (parcel === null) {
    parcels.delete(id);
    return;
  }
  parcels.set(id, parcel);
  if (parcel.driverId === null) return;
  if (!byDriver.has(parcel.driverId)) byDriver.set(parcel.driverId, new Set());
  byDriver.get(parcel.driverId).add(id);
}

function parcelsOf(driverId) {
  return [...(byDriver.get(driverId) || [])].sort((a, b) => a - b).map((id) => ({ id, ...parcels.get(id) }));
}

function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

function truckState(driverId) {
  const own = parcelsOf(driverId);
  let good = null;
  let reportAt = null;
  for (const p of own) {
    if (p.good && (!good || p.good.at > good.at)) good = p.good;
    if (p.reportAt && (!reportAt || p.reportAt > reportAt)) reportAt = p.reportAt;
  }
  const quietFor = reportAt === null ? null : Date.now() - reportAt;
  return { own, good, reportAt, quietFor, stale: quietFor !== null && quietFor > STALE_AFTER_MS };
}

function reportText(state) {
  if (state.quietFor === null) return "No position yet";
  if (state.stale) return `No report for ${duration(state.quietFor)}`;
  return `Reported ${duration(state.quietFor)} ago`;
}

// -- drawing -------------------------------------------------------------------------------

function listItem(driverId) {
  const item = document.createElement("li");
  item.className = "truck-item";
  item.dataset.driverId = driverId;
  const button = document.createElement("button");
  button.type = "button";
  button.className = "truck-button";
  for (const part of ["truck-dot", "truck-name", "truck-detail"]) {
    const span = document.createElement("span");
    span.className = part;
    button.append(span);
  }
  button.addEventListener("click", () => {
    const truck = trucks.get(driverId);
    if (truck?.marker) map.setView(truck.marker.getLatLng(), Math.max(map.getZoom(), 14));
  });
  item.append(button);
  return item;
}

/** Bring one driver's marker and list entry in line with its parcels (and drop it when it has none). */
function drawTruck(driverId) {
  const state = truckState(driverId);
  let truck = trucks.get(driverId);
  if (!state.own.length) {
    if (truck) {
      truck.marker?.remove();
      truck.item.remove();
      trucks.delete(driverId);
      drawPins();
    }
    byDriver.delete(driverId);
    return;
  }
  if (!truck) {
    truck = { marker: null, item: listItem(driverId), stale: null };
    trucks.set(driverId, truck);
    list.append(truck.item);
  }
  const numbers = state.own.map((p) => `#${p.id}`).join(" ");
  const label = `${driverName(driverId)} · ${numbers}`;
  const report = reportText(state);
  if (state.good && !truck.marker) {
    truck.marker = truckMarker([state.good.lat, state.good.lng], label).addTo(map);
    Object.assign(truck.marker.getElement().dataset, { driverId });
    if (boardSeen) {
      drawPins();
      frameTrucks();
    }
  }
  if (truck.marker) {
    if (state.good) truck.marker.place(state.good.lat, state.good.lng);
    const shown = state.stale ? `${label} · ${report.toLowerCase()}` : label;
    if (truck.label !== shown) truck.marker.setLabel(shown);
    truck.label = shown;
    truck.marker.setStale(state.stale);
    truck.marker.getElement().dataset.parcels = state.own.map((p) => p.id).join(" ");
  }
  const button = truck.item.firstElementChild;
  setText(button.querySelector(".truck-name"), `${driverName(driverId)} · ${numbers}`);
  setText(button.querySelector(".truck-detail"), report);
  button.disabled = !truck.marker;
  truck.item.classList.toggle("no-position", !truck.marker);
  if (truck.stale !== state.stale) {
    truck.stale = state.stale;
    truck.item.classList.toggle("is-stale", state.stale);
    truck.item.dataset.stale = String(state.stale);
    sortList();
  }
}

function hasTruckOnMap(parcel) {
  return Boolean(parcel?.ends && parcel.driverId !== null && trucks.get(parcel.driverId)?.marker);
}

/** Pin the pickup and destination of every parcel whose truck is on the map; unpin the
 * others. → whether a pin was added. */
function drawPins() {
  let added = false;
  for (const [id, pair] of pins) {
    if (hasTruckOnMap(parcels.get(id))) continue;
    for (const pin of pair) pin.remove();
    pins.delete(id);
  }
  for (const [id, parcel] of parcels) {
    if (pins.has(id) || !hasTruckOnMap(parcel)) continue;
    pins.set(id, ["pickup", "destination"].map((end) => {
      const point = parcel.ends[end];
      const place = point.address || `${point.lat.toFixed(5)}, ${point.lng.toFixed(5)}`;
      const pin = marker(end, [point.lat, point.lng], `${ICONS[end].label} of #${id} · ${place}`).addTo(map);
      Object.assign(pin.getElement().dataset, { parcelId: String(id), end });
      return pin;
    }));
    added = true;
  }
  return added;
}

function sortList() {
  const items = [...trucks.entries()].map(([id, t]) => ({ id, t }))
    .sort((a, b) => Number(b.t.stale) - Number(a.t.stale) || driverName(a.id).localeCompare(driverName(b.id)));
  list.append(...items.map(({ t }) => t.item));
}

function drawSummary() {
  const stale = [...trucks.values()].filter((t) => t.stale).length;
  const parts = [plural(trucks.size, "truck", "trucks"), plural(parcels.size, "active parcel", "active parcels")];
  if (stale) parts.push(`${stale} not reporting`);
  summary.textContent = boardSeen ? parts.join(" · ") : "Waiting for the live board…";
  document.getElementById("board-empty").hidden = trucks.size > 0 || !boardSeen;
}

function redrawAll() {
  for (const driverId of new Set([...trucks.keys(), ...[...parcels.values()].map((p) => p.driverId)])) {
    if (driverId !== null) drawTruck(driverId);
  }
  drawSummary();
}

// -- the socket ------------------------------------------------------------------------------

function onBoard(message) {
  parcels.clear();
  byDriver.clear();
  for (const p of message.parcels || []) {
    const at = time(p.timestamp);
    setParcel(Number(p.parcel_id), {
      status: p.status,
      driverId: p.driver_id === null || p.driver_id === undefined ? null : String(p.driver_id),
      good: p.location ? { lat: p.location.lat, lng: p.location.lng, at: at || 0 } : null,
      reportAt: p.location ? at : null,
      ends: endsOf(p),
    });
  }
  redrawAll();
  boardSeen = true;
  drawPins();
  drawSummary();
  frameTrucks();
}

function endsOf(message) {
  return message.pickup && message.destination ? { pickup: message.pickup, destination: message.destination } : null;
}

/** Frame every truck on the map and its parcels' pins (until the person moves the map). */
function frameTrucks() {
  const points = [...trucks.values()].filter((t) => t.marker).map((t) => t.marker.getLatLng());
  for (const pair of pins.values()) points.push(...pair.map((pin) => pin.getLatLng()));
  map.frameAll(points);
}

function onLocation(location, message) {
  const id = Number(message.parcel_id);
  let parcel = parcels.get(id);
  if (!parcel) {
    if (!message.driver_id) return;
    parcel = { status: null, driverId: String(message.driver_id), good: null, reportAt: null, ends: null };
    setParcel(id, parcel);
  }
  const at = time(message.timestamp) || Date.now();
  if (!parcel.reportAt || at >= parcel.reportAt) parcel.reportAt = at;
  if (message.quality !== "low" && (!parcel.good || at >= parcel.good.at)) {
    parcel.good = { lat: location.lat, lng: location.lng, at };
  }
  if (parcel.driverId !== null) drawTruck(parcel.driverId);
  drawSummary();
}

function onStatus(status, message) {
  if (message.type !== "status") return;
  const id = Number(message.parcel_id);
  const parcel = parcels.get(id);
  const before = parcel ? parcel.driverId : null;
  if (FINISHED.has(status)) {
    setParcel(id, null);
  } else {
    const driverId = "driver_id" in message
      ? (message.driver_id === null ? null : String(message.driver_id)) : before;
    setParcel(id, { status, driverId, good: parcel?.good || null, reportAt: parcel?.reportAt || null,
      ends: endsOf(message) || parcel?.ends || null });
    if (driverId !== null && driverId !== before) drawTruck(driverId);
  }
  if (before !== null) drawTruck(before);
  if (drawPins() && boardSeen) frameTrucks();
  drawSummary();
}

let everLive = false;
const socket = new TrackingSocket({
  path: "/ws/dispatch/",
  wsUrl: root.dataset.wsUrl,
  onMessage(message) { if (message.type === "board") onBoard(message); },
  onLocation,
  onStatus,
  onError: (text) => toast(text, "error", 8000),
  onState(state, detail) {
    showConnection(state, detail);
    if (state === "live" && everLive) toast("Reconnected to the live board", "success");
    if (state === "live") everLive = true;
  },
});

// Quiet trucks are found by the clock, not by a message: look every second.
everySecond(() => {
  for (const driverId of trucks.keys()) drawTruck(driverId);
  drawSummary();
});
connectWhileShown(() => [socket]);
