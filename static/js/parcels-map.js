/**
 * A client's active parcels on one map (/parcels): each parcel's truck, live.
 *
 * One TrackingSocket per active parcel (/ws/tracking/?parcel_id=…), as issue 11 allows:
 * a client has a handful of parcels under way, the sockets are the same ones each track
 * page opens, and no new server shape is needed (a user may hold 100 sockets). A truck
 * appears at the parcel's last known position (or its first live one), moves to each good
 * fix (a fix with quality "low" would send it across town: it is not followed), and goes
 * when the parcel is delivered or cancelled. Selecting a truck opens its parcel's track page.
 *
 * The connection pill sums the sockets up: Live when all are, else the worst of them.
 * Each truck's element carries data-parcel-id and data-lat/-lng for browser tests.
 */

import { baseMap, truckMarker } from "./fleet-map.js";
import { connectWhileShown, TrackingSocket } from "./tracking-socket.js";
import { dataJSON, showConnection, toast } from "./ui.js";

const root = document.getElementById("parcels-map-card");
const active = dataJSON(root, "parcels") || [];
// The server's rules (handlers/pages.py), not copies of them.
const { labels, finished } = dataJSON(root, "rules");
const FINISHED = new Set(finished);
const WORST_FIRST = ["error", "offline", "connecting", "live"];

if (active.length) {
  root.hidden = false;
  const map = baseMap("parcels-map", root);
  const note = document.getElementById("parcels-map-note");
  const entries = new Map(); // parcel id → {parcel, status, truck, socket, state}

  const label = (entry) => `#${entry.parcel.id} · ${labels[entry.status] || entry.status}`;
  const trackUrl = (parcel) => parcel.track_url || `/parcels/${parcel.id}/track`;

  function showNote() {
    const waiting = [...entries.values()].filter((e) => !e.truck).map((e) => e.parcel.id).sort((a, b) => a - b)
      .map((id) => `#${id}`);
    note.textContent = waiting.length
      ? `Select a truck to open its parcel's live map. No position yet for ${waiting.join(", ")}.`
      : "Select a truck to open its parcel's live map.";
  }

  function showPill() {
    const states = [...entries.values()].map((e) => e.state);
    const worst = WORST_FIRST.find((s) => states.includes(s)) || "offline";
    const counts = states.filter((s) => s === "live").length;
    showConnection(worst, worst === "live" ? "" : `${counts} of ${states.length} parcels live`);
  }

  function moveTruck(entry, lat, lng) {
    if (!entry.truck) {
      entry.truck = truckMarker([lat, lng], label(entry), { keyboard: true }).addTo(map);
      entry.truck.getElement().dataset.parcelId = String(entry.parcel.id);
      entry.truck.on("click", () => location.assign(trackUrl(entry.parcel)));
      entry.truck.place(lat, lng);
      map.frameAll([...entries.values()].filter((e) => e.truck).map((e) => e.truck.getLatLng()));
      showNote();
    }
    entry.truck.place(lat, lng);
  }

  function finish(entry) {
    entry.socket.disconnect();
    entry.truck?.remove();
    entries.delete(entry.parcel.id);
    showNote();
    showPill();
  }

  for (const parcel of active) {
    const entry = { parcel, status: parcel.status, truck: null, socket: null, state: "connecting" };
    entries.set(parcel.id, entry);
    if (parcel.last_location) moveTruck(entry, parcel.last_location.lat, parcel.last_location.lng);
    entry.socket = new TrackingSocket({
      parcelId: parcel.id,
      wsUrl: root.dataset.wsUrl,
      onState(state) {
        entry.state = state;
        showPill();
      },
      onLocation(location, message) {
        if (message.quality === "low") return;
        moveTruck(entry, location.lat, location.lng);
      },
      onStatus(status) {
        if (status === entry.status) return;
        entry.status = status;
        if (entry.truck) entry.truck.setLabel(label(entry));
        if (FINISHED.has(status)) {
          toast(`Parcel #${parcel.id}: ${labels[status] || status}`, "info");
          finish(entry);
        }
      },
      onError: (text) => toast(`Parcel #${parcel.id}: ${text}`, "error", 8000),
    });
  }
  const withTrucks = [...entries.values()].filter((e) => e.truck).map((e) => e.truck.getLatLng());
  if (!withTrucks.length) {
    // No truck yet: frame the pickups and destinations, and let the first truck join them.
    map.showArea(active.flatMap((p) => [[p.pickup.lat, p.pickup.lng], [p.destination.lat, p.destination.lng]]));
  }
  showNote();
  showPill();
  connectWhileShown(() => [...entries.values()].map((entry) => entry.socket));
}
