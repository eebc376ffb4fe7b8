/**
 * What the maps with many trucks share (the dispatcher's board, a client's parcels): the
 * base map with TILE_URL's tiles, a truck marker with a text label beside it, and the
 * view framed over every truck whenever one is added, until the person pans or zooms.
 *
 * Labels are DOM nodes filled with textContent: driver names and addresses are text
 * people typed, never HTML.
 */

import { marker } from "./markers.js";

const L = window.L;
const OSM_ATTRIBUTION = '&copy; <a href="https://www.openstreetmap.org/copyright">OpenStreetMap</a> contributors';
const WORLD = { center: [20, 0], zoom: 2 };

/** A Leaflet map in `elementId`, tiles from root's data-tile-url (data-blank-tile when one fails). */
export function baseMap(elementId, root) {
  const map = L.map(elementId, { worldCopyJump: true });
  const tileUrl = root.dataset.tileUrl;
  L.tileLayer(tileUrl, {
    maxZoom: 19,
    errorTileUrl: root.dataset.blankTile,
    attribution: tileUrl.includes("openstreetmap") ? OSM_ATTRIBUTION : "",
  }).addTo(map);
  map.setView(WORLD.center, WORLD.zoom);
  let framed = false;
  let userMoved = false;
  let programmatic = false;
  map.on("zoomstart movestart", () => { if (!programmatic) userMoved = true; });
  const fit = (points, maxZoom) => {
    programmatic = true;
    try {
      map.fitBounds(L.latLngBounds(points), { padding: [40, 40], maxZoom, animate: false });
    } finally {
      programmatic = false;
    }
  };
  /** Frame these points (every truck, when one is added), until the person moves the map themselves. */
  map.frameAll = (points) => {
    if (userMoved || !points.length) return;
    framed = true;
    fit(points, 14);
  };
  /** Show an area until there is something to frame (the trucks' first positions still frame it). */
  map.showArea = (points) => {
    if (!framed && !userMoved && points.length) fit(points, 13);
  };
  return map;
}

/** A truck at `latlng` with a label beside it; `.setLabel(text)`, `.setStale(bool)`, `.place(lat, lng)`. */
export function truckMarker(latlng, label, options = {}) {
  const truck = marker("driver", latlng, label, { zIndexOffset: 1000, ...options });
  const text = document.createElement("span");
  text.textContent = label;
  truck.bindTooltip(text, { permanent: true, direction: "right", offset: [20, 0], className: "truck-label" });
  truck.setLabel = (value) => {
    text.textContent = value;
    const el = truck.getElement();
    if (el) el.title = value;
  };
  truck.setStale = (stale) => {
    truck.getElement()?.classList.toggle("is-stale", stale);
    truck.getTooltip()?.getElement()?.classList.toggle("is-stale", stale);
    if (truck.getElement()) truck.getElement().dataset.stale = String(stale);
  };
  truck.place = (lat, lng) => {
    truck.setLatLng([lat, lng]);
    const el = truck.getElement();
    if (el) Object.assign(el.dataset, { lat: String(lat), lng: String(lng) });
  };
  return truck;
}
