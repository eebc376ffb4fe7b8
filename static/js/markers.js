/**
 * The map's markers, drawn as inline SVG (no image downloads): pickup is a blue
 * dot, the destination a red flag, the driver a green truck. The markup here is
 * fixed; nothing from the server is ever put into it.
 */

const L = window.L;

const PICKUP_HTML = '<span class="marker-dot"></span>';
const FLAG_HTML =
  '<svg viewBox="0 0 28 34" width="28" height="34" aria-hidden="true" focusable="false">' +
  '<path d="M6 3v28" stroke="#7f1d1d" stroke-width="2.5" stroke-linecap="round"/>' +
  '<path d="M7 4h17l-4.5 6 4.5 6H7z" fill="#dc2626" stroke="#991b1b" stroke-width="1" stroke-linejoin="round"/>' +
  "</svg>";
const TRUCK_HTML =
  '<svg viewBox="0 0 24 24" width="22" height="22" aria-hidden="true" focusable="false">' +
  '<path fill="#fff" d="M1.5 6.5a1 1 0 0 1 1-1h10a1 1 0 0 1 1 1V15h-12z"/>' +
  '<path fill="#fff" d="M14.5 8.5h3.6l3.4 3.7V15h-7z"/>' +
  '<circle cx="6" cy="16.5" r="2.2" fill="#fff" stroke="#15803d" stroke-width="1.2"/>' +
  '<circle cx="17.5" cy="16.5" r="2.2" fill="#fff" stroke="#15803d" stroke-width="1.2"/>' +
  "</svg>";

export const ICONS = {
  pickup: { label: "Pickup", icon: L.divIcon({ className: "marker marker-pickup", html: PICKUP_HTML, iconSize: [20, 20], iconAnchor: [10, 10] }) },
  destination: { label: "Destination", icon: L.divIcon({ className: "marker marker-destination", html: FLAG_HTML, iconSize: [28, 34], iconAnchor: [6, 31] }) },
  driver: { label: "Driver", icon: L.divIcon({ className: "marker marker-driver", html: TRUCK_HTML, iconSize: [38, 38], iconAnchor: [19, 19] }) },
};

/** A marker of one kind; `title` is set as text (a tooltip), never as HTML. */
export function marker(kind, latlng, title, options = {}) {
  return L.marker(latlng, { icon: ICONS[kind].icon, keyboard: false, title, ...options });
}

/** The map key in a corner: the three markers and what they mean. */
export function addLegend(map) {
  const Legend = L.Control.extend({
    onAdd() {
      const box = L.DomUtil.create("div", "legend");
      box.setAttribute("aria-hidden", "true"); // the panel says the same in words
      for (const kind of ["pickup", "destination", "driver"]) {
        const row = L.DomUtil.create("div", "legend-row", box);
        const swatch = L.DomUtil.create("span", `legend-icon legend-${kind}`, row);
        swatch.innerHTML = { pickup: PICKUP_HTML, destination: FLAG_HTML, driver: TRUCK_HTML }[kind];
        L.DomUtil.create("span", "legend-text", row).textContent = ICONS[kind].label;
      }
      return box;
    },
  });
  new Legend({ position: "bottomleft" }).addTo(map);
}
