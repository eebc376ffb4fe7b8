/**
 * The recipient's live map of one parcel, read-only, in two modes: the track page
 * (/parcels/<id>/track, logged in) and the share page (/t/<token>, no login; the
 * `data-share-token` attribute says so and the socket uses that token).
 *
 * Both show the status, the pickup and destination, the driver's truck gliding from fix
 * to fix (glide.js; it fades with "Last seen … ago" when the fixes stop), the driven path
 * from the history extended live (path.js) with a replay control (replay.js), the ETA
 * (eta.js), "Driver is nearby" on a geofence entry, the status timeline (timeline.js) and
 * notifications while the tab is hidden (notify.js). After a reconnect the socket passes on what
 * the page missed (tracking-socket.js), or says it could not, and the path is fetched again.
 * The track page adds the share
 * controls (share.js) for those who may share; the share page turns to "This link is no
 * longer valid" when its socket is refused, or shows the final status when the parcel
 * finished. The map frames everything once and then keeps the view the person chose,
 * unless "Follow driver" is on.
 *
 * The share page shows the truck only while the server's rules say a link does
 * (`rules.position_statuses`; the server sends no position otherwise), says where the
 * driver is in words rather than coordinates, and once the parcel finished shows its
 * final status in the pill and no truck and no path.
 */

import { etaDetail, etaSentence, placeName, roughDistance } from "./eta.js";
import { Truck } from "./glide.js";
import { addLegend, marker } from "./markers.js";
import { Notifier } from "./notify.js";
import { DrivenPath, metres } from "./path.js";
import { Replay } from "./replay.js";
import { shareControls } from "./share.js";
import { Timeline } from "./timeline.js";
import { connectWhileShown, TrackingSocket } from "./tracking-socket.js";
import { dataJSON, duration, everySecond, showConnection, showStatus, toast } from "./ui.js";

const L = window.L;
const OSM_ATTRIBUTION = '&copy; <a href="https://www.openstreetmap.org/copyright">OpenStreetMap</a> contributors';

const $ = (id) => document.getElementById(id);
const root = $("tracker");
const parcel = dataJSON(root, "parcel");
// The server's rules (handlers/pages.py), not copies of them.
const rules = dataJSON(root, "rules");
const labels = rules.labels;
const FINISHED = new Set(rules.finished);
const ROUTE_STATUSES = new Set(rules.en_route); // heading for the destination
const STALE_AFTER_MS = rules.last_seen_after_s * 1000; // no fix for this long: the truck fades, "Last seen … ago"
const shareToken = root.dataset.shareToken || "";
const POSITION_STATUSES = new Set(rules.position_statuses || []); // a share link shows the truck only then
const followBox = $("follow");

let status = parcel.status;
let lastTimestamp = null; // the server's timestamp of the position shown
let eta = null; // the latest broadcast's ETA
let framed = false; // pickup, destination and driver framed once
let userMoved = false;
let programmatic = false;
let ended = false; // a share page whose socket was refused

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
const pickupLabel = parcel.pickup.label || parcel.pickup.address || "";
const destinationLabel = parcel.destination.label || parcel.destination.address || "";
if (rules.geofence_radius_m) { // the zones in which "Driver is nearby" is said
  for (const [where, kind] of [[pickup, "pickup"], [destination, "destination"]]) {
    L.circle(where, { radius: rules.geofence_radius_m, className: `geofence geofence-${kind}`, interactive: false })
      .addTo(map);
  }
}
marker("pickup", pickup, `Pickup: ${pickupLabel}`).addTo(map);
marker("destination", destination, `Destination: ${destinationLabel}`).addTo(map);
const ahead = L.polyline([], { className: "route-line route-ahead", interactive: false });

function withoutUserMove(fn) {
  programmatic = true;
  try { fn(); } finally { programmatic = false; }
}

function frame() {
  const points = [pickup, destination];
  if (truck.latLng) points.push(truck.latLng);
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
  if (followBox && followBox.checked) {
    followBox.checked = false;
    toast("Stopped following the driver");
  }
});
followBox?.addEventListener("change", () => {
  if (followBox.checked && truck.latLng) map.panTo(truck.latLng);
});

/** The dashed line still to drive, from the truck to the destination, while en route. */
function drawAhead() {
  const show = ROUTE_STATUSES.has(status);
  if (show && !map.hasLayer(ahead)) ahead.addTo(map);
  if (!show && map.hasLayer(ahead)) ahead.remove();
  if (show) ahead.setLatLngs([truck.latLng || pickup, destination]);
}

// -- the truck, the path and the replay ------------------------------------------------

const truck = new Truck(map, (latlng) => {
  drawAhead();
  if (followBox && followBox.checked) withoutUserMove(() => map.panTo(latlng, { animate: false }));
}, rules.send_every_s * 1000);

let replay = null;
const path = new DrivenPath(map, root.dataset.historyUrl, rules.history_page, () => replay?.update());
replay = new Replay(map, path, {
  box: $("replay"), play: $("replay-play"), slider: $("replay-slider"), time: $("replay-time"), live: $("replay-live"),
}, (replaying) => truck.dim(replaying));

function moveTruck(location, timestamp) {
  truck.moveTo(location.lat, location.lng, timestamp);
  if (!framed && !userMoved) frame();
  framed = true;
}

// -- what the panel says ----------------------------------------------------------------

const timeline = new Timeline($("timeline"), { labels, order: rules.status_order, finished: FINISHED },
  parcel.timeline);
timeline.render();

function showPosition(location, timestamp) {
  const text = $("driver-position");
  if (text) {
    const coords = `${location.lat.toFixed(5)}, ${location.lng.toFixed(5)}`;
    if (shareToken) { // a recipient reads words, not coordinates
      text.textContent = location.address || `${roughDistance(metres(location, destination))} from the destination`;
    } else {
      text.textContent = location.address ? `${location.address} (${coords})` : coords;
    }
    Object.assign(text.dataset, { lat: String(location.lat), lng: String(location.lng) });
  }
  lastTimestamp = timestamp;
  tick();
}

/** Whether the latest fix is too old to show the truck (and its ETA) as current. */
function stale() {
  return Boolean(lastTimestamp) && !FINISHED.has(status) && Date.now() - Date.parse(lastTimestamp) > STALE_AFTER_MS;
}

/** The ETA sentence, or nothing: unknown, finished, or no fresh fix to base it on. */
function showEta() {
  const box = $("eta");
  if (!box) return;
  const sentence = FINISHED.has(status) || stale() ? "" : etaSentence(eta);
  box.hidden = !sentence;
  $("eta-text").textContent = sentence;
  $("eta-detail").textContent = sentence ? etaDetail(eta) : "";
  box.dataset.confidence = (sentence && eta.confidence) || ""; // the words say it; this lets a style too
}

/** "Driver is nearby" (a geofence entry), or hidden (an exit, a finished parcel). */
function showNearby(zone) {
  const box = $("nearby");
  if (!box) return;
  box.hidden = !zone || FINISHED.has(status);
  box.dataset.zone = zone || "";
  $("nearby-detail").textContent = zone ? `Close to ${placeName(zone)}.` : "";
}

function tick() {
  showEta();
  if (!lastTimestamp) return;
  const age = Date.now() - Date.parse(lastTimestamp);
  const old = stale();
  const updated = $("updated");
  updated.textContent = `Updated ${duration(age)} ago`;
  updated.classList.toggle("is-stale", old);
  $("stale").hidden = !old;
  truck.fade(old ? `Last seen ${duration(age)} ago` : null);
}

// -- notifications --------------------------------------------------------------------

const notifier = new Notifier($("notify"), $("notify-note"), root.dataset.swUrl);
const parcelName = rules.parcel_name || `Parcel #${parcel.id}`;

// -- the share page's end -----------------------------------------------------------------

/** A finished parcel: its final status and when, in words; no ETA, no "nearby". */
function showFinished() {
  const note = $("finished-note");
  if (!note || !FINISHED.has(status)) return;
  const at = timeline.timeOf(status);
  const time = at ? ` on ${new Date(at).toLocaleString([], { dateStyle: "medium", timeStyle: "short" })}` : "";
  note.textContent = `${labels[status] || status}${time}. Tracking has ended.`;
  note.hidden = false;
  eta = null;
  showEta();
  showNearby(null);
}

/** The share page follows the server's rule on the driver's position: shown (the path and the
 * replay wait for the frames), or not (not yet on its way, or finished): no truck, no path, no
 * replay, and before it is on its way a sentence saying when the truck will appear. */
function positionRule() {
  if (!shareToken) return;
  const shown = POSITION_STATUSES.has(status);
  $("position-note").hidden = shown || FINISHED.has(status);
  for (const part of [$("replay"), root.querySelector(".updated-line"), followBox?.closest(".check")]) {
    if (part) part.hidden = !shown;
  }
  const notify = root.querySelector(".notify-box");
  if (notify) notify.hidden = FINISHED.has(status); // nothing more will happen to notify of
  if (shown) {
    if (!map.hasLayer(path.line)) path.line.addTo(map); // the live frames follow from the server
    return;
  }
  truck.remove();
  path.line.remove();
  replay.leave();
  $("driver-position").textContent = FINISHED.has(status) ? "Tracking has ended" : "Not shown yet";
  lastTimestamp = null;
  eta = null;
  showEta();
}

/** A finished parcel on the share page: its final status in the pill, as on every other page. */
function showEnded() {
  showConnection("ended", "");
  $("connection-text").textContent = labels[status] || status;
  $("connection").title = "";
}

/** The share socket was refused (revoked, expired, or the parcel finished): say which. */
function endShare() {
  if (ended) return;
  ended = true;
  if (FINISHED.has(status)) { // nothing went wrong: the parcel arrived (or was cancelled), tracking is over
    showEnded();
    positionRule();
    return showFinished();
  }
  replay.leave();
  $("share-live").hidden = true;
  $("link-ended").hidden = false;
  document.title = $("link-ended-title").textContent;
}

// -- the socket -------------------------------------------------------------------

let everLive = false;
let lost = false;

function onState(state, detail) {
  if (ended) return; // the share page's final word stays
  showConnection(state, detail);
  if (state === "error" && shareToken) endShare();
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

function onStatus(next, message) {
  if (next === status) return;
  status = next;
  showStatus(status, labels);
  timeline.add(status, message.timestamp);
  drawAhead();
  tick();
  showFinished();
  positionRule();
  if (FINISHED.has(status)) showStops(null);
  const label = labels[status] || status;
  toast(`Parcel status: ${label}`, "info");
  if (message.type === "status") notifier.notify(`${parcelName}: ${label}`, "The parcel's status changed.", "status");
}

function onLocation(location, message) {
  if (message.quality === "low") return; // docs/protocol.md: a weak fix does not move the truck
  if ("eta" in message) eta = message.eta;
  if (message.timestamp && message.timestamp === lastTimestamp) return tick(); // the snapshot we already show
  const timestamp = message.timestamp || new Date().toISOString();
  moveTruck(location, timestamp);
  path.addLive(location.lat, location.lng, timestamp);
  showPosition(location, timestamp);
}

/** "2 stops before yours" (the server's words, rules.stops_texts), from `subscribed` or a `route_position`. */
function showStops(stopsBefore) {
  const line = $("stops-before");
  if (!line) return;
  const texts = rules.stops_texts;
  line.hidden = FINISHED.has(status) || stopsBefore == null;
  if (stopsBefore != null) line.textContent = (texts[String(stopsBefore)] || texts.n).replace("{n}", stopsBefore);
}

function onMessage(message) {
  if (message.type === "route_position" || (message.type === "subscribed" && "stops_before" in message)) {
    return showStops(message.stops_before);
  }
  if (message.type !== "geofence") return;
  if (message.event === "exit") return showNearby(null);
  if (message.event !== "enter") return;
  showNearby(message.zone);
  const where = placeName(message.zone);
  notifier.notify("Driver is nearby", `${parcelName}: the driver is close to ${where}.`, `nearby-${message.zone}`);
}

if (parcel.last_location) {
  const last = parcel.last_location;
  moveTruck(last, last.timestamp); // the first position: adds the truck and frames all three
  showPosition(last, last.timestamp);
  // The geofence event of a crossing before the page opened is not sent again: the last
  // position tells whether the driver is still within a zone.
  const within = (point) => metres(last, point) <= rules.geofence_radius_m;
  if (rules.geofence_radius_m) showNearby(within(destination) ? "destination" : within(pickup) ? "pickup" : null);
} else {
  frame(); // pickup and destination now; the driver joins the frame when it first appears
}
drawAhead();
showFinished();
positionRule();
everySecond(tick);
path.load();
shareControls($("share-controls"), root.dataset.shareApi);

const socket = new TrackingSocket({
  parcelId: parcel.id,
  token: shareToken,
  wsUrl: root.dataset.wsUrl,
  onLocation,
  onStatus,
  onMessage,
  onGap: () => path.reload(), // a reconnect that could not be recovered: the path may have a gap
  onError: (text) => { if (!shareToken) toast(text, "error", 8000); }, // a link's errors: the page says it whole
  onState,
});
if (shareToken && FINISHED.has(status)) {
  ended = true; // its link's socket would be refused: the page already says how it ended
} else {
  connectWhileShown(() => [socket]);
}
