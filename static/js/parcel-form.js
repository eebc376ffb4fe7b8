/**
 * The new-parcel form (/dispatch/parcels/new), made nicer where JavaScript runs; the form
 * itself is a plain POST that works without it, and the server checks every field.
 *
 * - The delivery window's times are read by the server in the zone this browser is in
 *   (the hidden `tz` field says which; without it they are UTC, as the hint then says).
 * - A map picks the pickup and destination points: a click (or tap) sets the point the
 *   radio buttons choose, which follow the field last focused; the pickup's click moves
 *   on to the destination while it is still empty. A point typed as "lat, lng" is drawn
 *   as it is typed. The map opens where the person left it (localStorage), else around the
 *   business's latest pickup (the server's data-center).
 *
 * The texts come from the page's data attributes (the server's), set with textContent.
 */

import { baseMap } from "./fleet-map.js";
import { marker } from "./markers.js";

const L = window.L;
const form = document.getElementById("parcel-form");
const card = document.getElementById("map-card");
const ENDS = ["pickup", "destination"];
const VIEW_KEY = "parcel-form-map-view";

const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
if (zone) {
  form.elements.tz.value = zone;
  const hint = document.getElementById("tz-hint");
  hint.textContent = hint.dataset.zoneText.replace("{zone}", zone);
}

const pointInput = (end) => form.elements[`${end}_point`];

/** The point typed in a field, to draw it; null when it is not one (the server says what is wrong). */
function typedPoint(text) {
  const parts = text.trim().split(/\s*,\s*|\s+/);
  if (parts.length !== 2 || parts.some((p) => p === "")) return null;
  const [lat, lng] = parts.map(Number);
  if (!Number.isFinite(lat) || !Number.isFinite(lng) || Math.abs(lat) > 90 || Math.abs(lng) > 180) return null;
  return [lat, lng];
}

card.hidden = false;
const map = baseMap("intake-map", card);
const markers = {};
const help = document.getElementById("map-help");
let target = "pickup";

function choose(end) {
  target = end;
  form.querySelector(`input[name="map_target"][value="${end}"]`).checked = true;
  help.textContent = card.dataset[`help${end[0].toUpperCase()}${end.slice(1)}`];
}

/** Draw the point a field holds (or take its marker away); → whether there is one. */
function draw(end) {
  const point = typedPoint(pointInput(end).value);
  if (!point) {
    markers[end]?.remove();
    delete markers[end];
    return false;
  }
  if (!markers[end]) {
    markers[end] = marker(end, point, end === "pickup" ? "Pickup" : "Destination").addTo(map);
  }
  markers[end].setLatLng(point);
  Object.assign(markers[end].getElement().dataset, { end, lat: String(point[0]), lng: String(point[1]) });
  return true;
}

/** Show every point drawn (after typing, and on a form that came back with points). */
function frame() {
  const points = Object.values(markers).map((m) => m.getLatLng());
  if (points.length === 1) map.setView(points[0], Math.max(map.getZoom(), 14), { animate: false });
  else if (points.length) map.fitBounds(L.latLngBounds(points), { padding: [40, 40], maxZoom: 15, animate: false });
}

for (const end of ENDS) {
  const group = form.querySelector(`fieldset[data-point="${end}"]`);
  group.addEventListener("focusin", () => choose(end));
  pointInput(end).addEventListener("input", () => draw(end));
  pointInput(end).addEventListener("change", () => { if (draw(end)) frame(); });
  draw(end);
}
for (const radio of form.querySelectorAll('input[name="map_target"]')) {
  radio.addEventListener("change", () => choose(radio.value));
}

map.on("click", (event) => {
  const { lat, lng } = event.latlng.wrap();
  const end = target;
  pointInput(end).value = `${lat.toFixed(6)}, ${lng.toFixed(6)}`;
  draw(end);
  const said = card.dataset[`set${end[0].toUpperCase()}${end.slice(1)}`];
  if (end === "pickup" && !pointInput("destination").value.trim()) {
    choose("destination");
    help.textContent = `${said} ${help.textContent}`;
  } else {
    help.textContent = said;
  }
});

const saved = (() => {
  try {
    return JSON.parse(localStorage.getItem(VIEW_KEY) || "null");
  } catch {
    return null;
  }
})();
if (Object.keys(markers).length) frame();
else if (saved && Array.isArray(saved.center)) map.setView(saved.center, saved.zoom, { animate: false });
else if (card.dataset.center) map.setView(card.dataset.center.split(",").map(Number), 12, { animate: false });
map.on("moveend", () => {
  const center = map.getCenter();
  localStorage.setItem(VIEW_KEY, JSON.stringify({ center: [center.lat, center.lng], zoom: map.getZoom() }));
});
// The field the server found a problem in is where the person goes first.
document.getElementById("form-problems")?.focus();
