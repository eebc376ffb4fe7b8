/**
 * The driver's truck on a recipient's map: one Leaflet marker, moved (never re-created),
 * that glides to each new fix with requestAnimationFrame instead of jumping, and fades
 * with a "Last seen 2 min ago" label when the fixes stop.
 *
 * The glide lasts most of the time between the last two fixes (by the server's
 * timestamps), so a truck reporting steadily keeps moving and lands just before the next
 * fix, and at most most of the driver's send interval. The same fix sent again lets a running glide go on. A hidden page jumps (its frames are throttled),
 * and a timer lands the truck should the frames stop mid-way. The element's data-lat and
 * data-lng say the fix the truck has reached (the browser tests read them).
 */

import { marker } from "./markers.js";

const L = window.L;
const GLIDE_MIN_MS = 300;
const FIRST_GLIDE_MS = 1000; // no interval known yet
const GLIDE_SHARE = 0.9; // of the time between the last two fixes

const ease = (k) => 0.5 - Math.cos(Math.PI * k) / 2;

export class Truck {
  /**
   * @param {L.Map} map
   * @param {(latlng: L.LatLng) => void} [onMove] after every step of the truck (to follow it)
   * @param {number} [maxGlideMs] the longest glide: the driver's send interval (the server's rule)
   */
  constructor(map, onMove = () => {}, maxGlideMs = 5000) {
    this.map = map;
    this.maxGlideMs = maxGlideMs;
    this.onMove = onMove;
    this.marker = null;
    this.glide = null;
    this.lastFixTime = null; // the server's time of the latest fix, ms
    this.label = null; // the "Last seen …" tooltip's text, while faded
  }

  get latLng() {
    return this.marker ? this.marker.getLatLng() : null;
  }

  /** The truck to a new fix: added at once the first time, then glided. */
  moveTo(lat, lng, timestamp) {
    const t = Date.parse(timestamp);
    const interval = this.lastFixTime !== null && Number.isFinite(t) ? t - this.lastFixTime : NaN;
    if (Number.isFinite(t)) this.lastFixTime = Math.max(this.lastFixTime ?? t, t);
    if (!this.marker) {
      this.marker = marker("driver", [lat, lng], "Driver", { zIndexOffset: 1000 }).addTo(this.map);
      this.land(lat, lng);
      return;
    }
    if (this.glide && this.glide.lat === lat && this.glide.lng === lng) return; // the same fix again: glide on
    const from = this.marker.getLatLng();
    this.stop();
    if (document.hidden || (from.lat === lat && from.lng === lng)) return this.land(lat, lng);
    // Land a little before the next fix is due, so a truck reporting steadily reaches each one.
    const ms = Number.isFinite(interval) && interval > 0
      ? Math.min(this.maxGlideMs * GLIDE_SHARE, Math.max(GLIDE_MIN_MS, interval * GLIDE_SHARE)) : FIRST_GLIDE_MS;
    const start = performance.now();
    const step = (now) => {
      const k = Math.min(1, Math.max(0, (now - start) / ms));
      if (k >= 1) return this.land(lat, lng);
      const e = ease(k);
      this.marker.setLatLng([from.lat + (lat - from.lat) * e, from.lng + (lng - from.lng) * e]);
      this.onMove(this.marker.getLatLng());
      this.glide.frame = requestAnimationFrame(step);
    };
    this.glide = { lat, lng, frame: requestAnimationFrame(step), timer: setTimeout(() => this.land(lat, lng), ms + 500) };
  }

  /** Put the truck on its fix and say so in data-lat/data-lng. */
  land(lat, lng) {
    this.stop();
    this.marker.setLatLng([lat, lng]);
    const el = this.marker.getElement();
    if (el) Object.assign(el.dataset, { lat: String(lat), lng: String(lng) });
    this.onMove(this.marker.getLatLng());
  }

  stop() {
    if (!this.glide) return;
    cancelAnimationFrame(this.glide.frame);
    clearTimeout(this.glide.timer);
    this.glide = null;
  }

  /** Faded with a label ("Last seen 2 min ago"), or as usual (text null). */
  fade(text) {
    if (!this.marker) return;
    const el = this.marker.getElement();
    if (el) el.classList.toggle("is-faded", Boolean(text));
    if (text && !this.label) {
      this.label = document.createElement("span");
      this.marker.bindTooltip(this.label, { permanent: true, direction: "top", offset: [0, -20],
        className: "last-seen-label" }).openTooltip();
    } else if (!text && this.label) {
      this.marker.unbindTooltip();
      this.label = null;
    }
    if (this.label) this.label.textContent = text;
  }

  /** Off the map (a share link that no longer shows the driver); the next fix adds it again. */
  remove() {
    this.stop();
    this.marker?.remove();
    this.marker = null;
    this.label = null;
    this.lastFixTime = null;
  }

    /** Dimmed while a replay shows where it was (the live truck stays on the map). */
  dim(on) {
    const el = this.marker && this.marker.getElement();
    if (el) el.classList.toggle("is-dimmed", on);
  }
}

