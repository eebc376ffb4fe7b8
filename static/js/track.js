/**
 * The live map of one parcel (/parcels/<id>/track), read-only.
 *
 * Pickup, destination and the driver's truck on a Leaflet map; the truck
 * glides to each new position (the one marker is moved, never re-created);
 * the map frames everything once and then keeps the view the person chose,
 * unless "Follow driver" is on. The connection pill, "updated … ago", the
 * status and toasts are all text.
 */

import { addLegend, marker } from "./markers.js";
import { TrackingSocket } from "./tracking-socket.js";
import { dataJSON, duration, everySecond, showConnection, showStatus, toast } from "./ui.js";

const L = window.L;
const GLIDE_MS = 1000;
const STALE_AFTER_MS = 30000;
const OSM_ATTRIBUTION = '&copy; <a href="https://www.openstreetmap.org/copyright">OpenStreetMap</a> contributors';

const root = document.getElementById("tracker");
const parcel = dataJSON(root, "parcel");
// The server's rules (handlers/pages.py), not copies of them.
const { labels, finished, en_route: enRoute } = dataJSON(root, "rules");
const FINISHED = new Set(finished);
const ROUTE_STATUSES = new Set(enRoute); // heading for the destination
const followBox = document.getElementById("follow");
const positionText = document.getElementById("driver-position");
const updatedText = document.getElementById("updated");
const staleBadge = document.getElementById("stale");

let status = parcel.status;
let lastTimestamp = null; // the server's timestamp of the position shown
let driverMarker = null;
let glide = null;
let framed = false; // pickup, destination and driver framed once
let userMoved = false;
let programmatic = false;

// -- the map --------------------------------------------------------------------

const map = L.map("map");
const tileUrl = root.dataset.tileUrl;
L.tileLayer(tileUrl, {
  maxZoom: 19,
  errorTileUrl: root.dataset.blankTile, // offline, the map stays a quiet grid instead of broken images
  attribution: tileUrl.includes("openstreetmap") ? OSM_ATTRIBUTION : "",
}).addTo(map);
addLegend(map);

const pickup = L.latLng(parcel.pickup.lat, parcel.pickup.lng);
const destination = L.latLng(parcel.destination.lat, parcel.destination.lng);
marker("pickup", pickup, `Pickup: ${parcel.pickup.label}`).addTo(map);
marker("destination", destination, `Destination: ${parcel.destination.label}`).addTo(map);
const travelled = L.polyline([], { className: "route-line route-done", interactive: false });
const ahead = L.polyline([], { className: "route-line route-ahead", interactive: false });

function withoutUserMove(fn) {
  programmatic = true;
  try { fn(); } finally { programmatic = false; }
}

function frame() {
  const points = [pickup, destination];
  if (driverMarker) points.push(driverMarker.getLatLng());
  withoutUserMove(() => map.fitBounds(L.latLngBounds(points), { padding: [48, 48], maxZoom: 16, animate: false }));
}

// The view the map settled on, as data-center-lat/-lng and data-zoom on #map (written
// on every moveend), so browser tests can read it (tests/browser/test_browser_map_view.py).
map.on("moveend", () => {
  const center = map.getCenter();
  Object.assign(map.getContainer().dataset,
    { centerLat: String(center.lat), centerLng: String(center.lng), zoom: String(map.getZoom()) });
});
map.on("zoomstart movestart", () => { if (!programmatic) userMoved = true; });
map.on("dragstart", () => {
  userMoved = true;
  if (followBox.checked) {
    followBox.checked = false;
    toast("Stopped following the driver");
  }
});
followBox.addEventListener("change", () => {
  if (followBox.checked && driverMarker) map.panTo(driverMarker.getLatLng());
});

function drawRoute() {
  const show = ROUTE_STATUSES.has(status);
  for (const line of [travelled, ahead]) {
    if (show && !map.hasLayer(line)) line.addTo(map);
    if (!show && map.hasLayer(line)) line.remove();
  }
  if (!show) return;
  const here = driverMarker ? driverMarker.getLatLng() : null;
  travelled.setLatLngs(here ? [pickup, here] : []);
  ahead.setLatLngs([here || pickup, destination]);
}

// -- the driver's truck ---------------------------------------------------------

function stopGlide() {
  if (!glide) return;
  cancelAnimationFrame(glide.raf);
  clearTimeout(glide.timer);
  glide = null;
}

/** Put the truck at its target and say where it is (data-lat/data-lng: the position reached). */
function place(lat, lng) {
  stopGlide();
  driverMarker.setLatLng([lat, lng]);
  const el = driverMarker.getElement();
  if (el) Object.assign(el.dataset, { lat: String(lat), lng: String(lng) });
  drawRoute();
}

/** Move the truck over GLIDE_MS with requestAnimationFrame (at once when the page is hidden). */
function moveDriver(lat, lng) {
  if (!driverMarker) {
    driverMarker = marker("driver", [lat, lng], "Driver", { zIndexOffset: 1000 }).addTo(map);
    place(lat, lng);
    if (!framed && !userMoved) frame();
    framed = true;
    return;
  }
  const from = driverMarker.getLatLng();
  stopGlide();
  if (followBox.checked) map.panTo([lat, lng], { duration: GLIDE_MS / 1000 });
  if (document.hidden || (from.lat === lat && from.lng === lng)) {
    place(lat, lng);
    return;
  }
  const start = performance.now();
  const step = (now) => {
    const k = Math.min(1, (now - start) / GLIDE_MS);
    const e = k < 0.5 ? 2 * k * k : 1 - (-2 * k + 2) ** 2 / 2; // ease in and out
    if (k >= 1) return place(lat, lng);
    driverMarker.setLatLng([from.lat + (lat - from.lat) * e, from.lng + (lng - from.lng) * e]);
    drawRoute();
    glide.raf = requestAnimationFrame(step);
  };
  // The timer lands the truck even if animation frames stop (a throttled background tab).
  glide = { raf: requestAnimationFrame(step), timer: setTimeout(() => place(lat, lng), GLIDE_MS + 500) };
}

function showPosition(location, timestamp) {
  const coords = `${location.lat.toFixed(5)}, ${location.lng.toFixed(5)}`;
  positionText.textContent = location.address ? `${location.address} (${coords})` : coords;
  Object.assign(positionText.dataset, { lat: String(location.lat), lng: String(location.lng) });
  lastTimestamp = timestamp;
  tick();
}

function tick() {
  if (!lastTimestamp) return;
  const age = Date.now() - Date.parse(lastTimestamp);
  updatedText.textContent = `Updated ${duration(age)} ago`;
  const stale = age > STALE_AFTER_MS && !FINISHED.has(status);
  staleBadge.hidden = !stale;
  updatedText.classList.toggle("is-stale", stale);
}

// -- the socket -------------------------------------------------------------------

let everLive = false;
let lost = false;

function onState(state, detail) {
  showConnection(state, detail);
  if (state === "live") {
    if (!everLive) toast("Connected: live updates are on", "success");
    else if (lost) toast("Reconnected", "success");
    everLive = true;
    lost = false;
  } else if (state === "offline" && everLive && !lost) {
    lost = true;
    toast("Connection lost. Reconnecting…", "warning");
  }
}

function onStatus(next) {
  if (next === status) return;
  status = next;
  showStatus(status, labels);
  drawRoute();
  tick();
  toast(`Parcel status: ${labels[status] || status}`, "info");
}

function onLocation(location, message) {
  if (message.timestamp && message.timestamp === lastTimestamp) return; // the snapshot we already show
  moveDriver(location.lat, location.lng);
  showPosition(location, message.timestamp || new Date().toISOString());
}

if (parcel.last_location) {
  const last = parcel.last_location;
  moveDriver(last.lat, last.lng); // the first position: adds the truck and frames all three
  showPosition(last, last.timestamp);
} else {
  frame(); // pickup and destination now; the driver joins the frame when it first appears
}
drawRoute();
everySecond(tick);

const socket = new TrackingSocket({
  parcelId: parcel.id,
  wsUrl: root.dataset.wsUrl,
  onLocation,
  onStatus,
  onError: (text) => toast(text, "error", 8000),
  onState,
});
socket.connect();
window.addEventListener("pagehide", () => socket.disconnect());
window.addEventListener("pageshow", (event) => { if (event.persisted) socket.connect(); });
