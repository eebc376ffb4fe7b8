/**
 * The replay control (CONTRACT §7, "Pages"): play/pause and a slider over the driven
 * path's times. Scrubbing or playing shows a ghost truck where the driver was at the time
 * shown; "Back to live" (or sliding to the end) hides it and the map is live again. While
 * live, the slider's end follows the growing path.
 *
 * A replay lasts REPLAY_MS whatever the path's length (never faster than real time ×1).
 */

import { clock } from "./ui.js";

const L = window.L;
const REPLAY_MS = 20000;
const GHOST = L.divIcon({ className: "marker marker-replay", html: '<span class="marker-replay-dot"></span>',
  iconSize: [22, 22], iconAnchor: [11, 11] });

function timeText(t) {
  const sameDay = new Date(t).toDateString() === new Date().toDateString();
  const day = sameDay ? "" : `${new Date(t).toLocaleDateString([], { day: "numeric", month: "short" })}, `;
  return day + clock(t);
}

export class Replay {
  /**
   * @param {L.Map} map
   * @param {import("./path.js").DrivenPath} path
   * @param {{play: HTMLButtonElement, slider: HTMLInputElement, time: HTMLElement, live: HTMLButtonElement,
   *          box: HTMLElement}} controls
   * @param {(replaying: boolean) => void} [onMode]
   */
  constructor(map, path, controls, onMode = () => {}) {
    Object.assign(this, { map, path, onMode, ...controls });
    this.replaying = false;
    this.playing = false;
    this.frame = null;
    this.ghost = null;
    this.play.addEventListener("click", () => (this.playing ? this.pause() : this.start()));
    this.live.addEventListener("click", () => this.leave());
    this.slider.addEventListener("input", () => this.scrub());
    this.slider.addEventListener("keydown", (event) => { if (event.key === "Escape") this.leave(); });
    this.update();
  }

  /** The path grew: stretch the slider; a live slider stays at the (new) end. */
  update() {
    const span = this.path.span();
    this.play.disabled = !span;
    this.slider.disabled = !span;
    this.box.classList.toggle("is-empty", !span);
    if (!span) {
      this.time.textContent = "No path yet";
      return;
    }
    const [first, last] = span;
    this.slider.min = "0";
    this.slider.max = String(Math.round((last - first) / 1000));
    this.first = first;
    if (!this.replaying) {
      this.slider.value = this.slider.max;
      this.time.textContent = "Live";
    }
  }

  /** The time the slider shows, ms. */
  get at() {
    return this.first + Number(this.slider.value) * 1000;
  }

  scrub() {
    if (Number(this.slider.value) >= Number(this.slider.max) && !this.playing) return this.leave();
    this.enter();
    this.show(this.at);
  }

  start() {
    if (!this.path.span()) return;
    this.enter();
    if (Number(this.slider.value) >= Number(this.slider.max)) this.slider.value = "0";
    this.playing = true;
    this.play.setAttribute("aria-pressed", "true");
    this.play.textContent = "Pause";
    const [first, last] = this.path.span();
    const speed = Math.max(1, (last - first) / REPLAY_MS);
    let t = this.at;
    let before = performance.now();
    const step = (now) => {
      t = Math.min(last, t + (now - before) * speed);
      before = now;
      this.slider.value = String(Math.round((t - first) / 1000));
      this.show(t);
      if (t >= last) return this.pause();
      this.frame = requestAnimationFrame(step);
    };
    this.show(t);
    this.frame = requestAnimationFrame(step);
  }

  pause() {
    cancelAnimationFrame(this.frame);
    this.frame = null;
    this.playing = false;
    this.play.setAttribute("aria-pressed", "false");
    this.play.textContent = "Play";
  }

  enter() {
    if (this.replaying) return;
    this.replaying = true;
    this.live.hidden = false;
    this.box.classList.add("is-replaying");
    this.onMode(true);
  }

  /** Back to live: no ghost, the slider at the end. */
  leave() {
    this.pause();
    this.replaying = false;
    this.live.hidden = true;
    this.box.classList.remove("is-replaying");
    if (this.ghost) {
      this.ghost.remove();
      this.ghost = null;
    }
    this.update();
    this.onMode(false);
  }

  /** The ghost truck where the driver was at time t (data-lat/-lng, data-time for tests). */
  show(t) {
    const where = this.path.at(t);
    if (!where) return;
    if (!this.ghost) {
      this.ghost = L.marker([where.lat, where.lng], { icon: GHOST, keyboard: false, interactive: false,
        zIndexOffset: 1100 }).addTo(this.map);
    } else {
      this.ghost.setLatLng([where.lat, where.lng]);
    }
    const el = this.ghost.getElement();
    if (el) Object.assign(el.dataset, {
      lat: String(where.lat), lng: String(where.lng), time: new Date(t).toISOString(),
    });
    this.time.textContent = timeText(t);
    this.slider.setAttribute("aria-valuetext", this.time.textContent);
  }
}
