/**
 * Sharing the device position from a driver's page, on and off: the lifecycle the parcel
 * page (driver.js, /driver/parcels/<id>) and the shift page (shift.js, /driver) have in common.
 *
 * `start()` checks that the browser can share a position (geolocation, a secure context),
 * opens the page's socket, watches the position (high accuracy), hands the latest fix to
 * the outbox every `sendEveryMs` (and at once when the first fix comes, the socket comes
 * back or the page comes back to the front, with a "resumed" toast) and keeps the screen
 * awake (wake-lock.js). `stop()` undoes all of that; leaving the page or logging out stops
 * (leaving tells `onChange` so: the driver's pages remember a shift across pages, driver-shift.js).
 *
 * What differs between the pages comes in as options: the texts, whether there is
 * anything to send (`canSend`), the least time between two fixes sent (`minGapMs`), and
 * callbacks to show the on/off state, each fix, a problem (an empty text: none) and the
 * wake lock's state. The page wires its socket's state to `socketState(state, detail)`.
 */

import { onLogout } from "./logout.js";
import { toast } from "./ui.js";
import { ScreenWakeLock } from "./wake-lock.js";

const NO_GEOLOCATION = "This browser cannot share your location. Open this page in your phone's main browser.";
const NOT_SECURE = "Location needs a secure (https) address. Open this site through its https address.";
const WATCH_OPTIONS = { enableHighAccuracy: true, maximumAge: 0, timeout: 30000 };

export class PositionSharing {
  /**
   * @param {object} options
   * @param {import("./tracking-socket.js").TrackingSocket} options.socket connected on start, closed on stop
   * @param {import("./outbox.js").Outbox} options.outbox where each fix goes (sent now or kept while offline)
   * @param {number} options.sendEveryMs how often the latest fix is sent
   * @param {number} [options.minGapMs] fixes are not sent closer together than this, unless the socket just came back
   * @param {{denied: string, unavailable: string, waiting: string, resumed: string, stopped: string}} options.texts
   *   the problems the driver is told of, the toast when the page is back in front, and what a refused
   *   socket's detail follows ("Tracking stopped": "Tracking stopped: <detail>")
   * @param {() => boolean} [options.canSend] whether there is anything to send a fix for now
   * @param {(on: boolean, why: {leaving: boolean}) => void} options.onChange sharing turned on or off
   *   (`leaving`: off only because the page is being left, not because it was turned off)
   * @param {(position: GeolocationPosition) => void} [options.onFix] each fix from the device
   * @param {(text: string) => void} options.onProblem what keeps the position from being shared; "" clears it
   * @param {(state: string, why?: string) => void} options.onWake the wake lock's state (wake-lock.js)
   */
  constructor({ socket, outbox, sendEveryMs, minGapMs = 0, texts, canSend = () => true, onChange, onFix = () => {},
    onProblem, onWake }) {
    Object.assign(this, { socket, outbox, sendEveryMs, minGapMs, texts, canSend, onChange, onFix, onProblem });
    this.on = false;
    this.watchId = null;
    this.sendTimer = null;
    this.fix = null; // the latest GeolocationPosition
    this.lastEmit = 0; // when a fix was last handed to the outbox (ms)
    this.everLive = false; // the socket has been live since sharing was turned on
    this.wasHidden = false;
    // Made first: its own visibilitychange listener asks for the lock again before the one below sends.
    this.wake = new ScreenWakeLock(onWake);
    document.addEventListener("visibilitychange", () => this._visibilityChanged());
    window.addEventListener("pagehide", () => { if (this.on) this.stop({ leaving: true }); });
    onLogout(() => { if (this.on) this.stop(); });
  }

  toggle() {
    return this.on ? this.stop() : this.start();
  }

  start() {
    if (!("geolocation" in navigator)) {
      this.onProblem(NO_GEOLOCATION);
      return;
    }
    if (!window.isSecureContext) {
      this.onProblem(NOT_SECURE);
      return;
    }
    this.onProblem("");
    this.on = true;
    this.fix = null;
    this.everLive = false;
    this.lastEmit = 0;
    this.onChange(true, { leaving: false });
    this.socket.connect();
    this.watchId = navigator.geolocation.watchPosition((position) => this._fixed(position),
      (error) => this._fixFailed(error), WATCH_OPTIONS);
    this._rhythm();
    this.wake.hold();
  }

  /** Stop sharing (`leaving`: only because the page is being left). */
  stop({ leaving = false } = {}) {
    this.on = false;
    this.onChange(false, { leaving });
    if (this.watchId !== null) navigator.geolocation.clearWatch(this.watchId);
    this.watchId = null;
    clearInterval(this.sendTimer);
    this.sendTimer = null;
    if (this.socket.state !== "error") this.socket.disconnect(); // keep a refusal's "Error" in the pill
    this.wake.release();
  }

  /** Send every `sendEveryMs` from now on: after a fix that went out between two ticks, the next
   * goes one whole period later (so a reconnect's fix and a tick never come close together). */
  _rhythm() {
    clearInterval(this.sendTimer);
    this.sendTimer = setInterval(() => this.send(false, true), this.sendEveryMs);
  }

  /** Hand the latest fix to the outbox (`force`: the socket just came back, send whatever the gap;
   * `tick`: the period's own send). */
  send(force = false, tick = false) {
    if (!this.on || !this.fix || !this.canSend()) return;
    if (this.socket.state === "live") this.everLive = true;
    else if (!this.everLive && navigator.onLine !== false) return; // still opening: sent once live, not queued
    if (!force && this.lastEmit && Date.now() - this.lastEmit < this.minGapMs) return;
    this.lastEmit = Date.now();
    if (!tick) this._rhythm();
    const c = this.fix.coords;
    this.outbox.deliver({ lat: c.latitude, lng: c.longitude, accuracy: c.accuracy, heading: c.heading, speed: c.speed })
      .catch((error) => toast(`Could not keep a position: ${error.message}`, "error"));
  }

  /** The page's socket changed state: live sends what waited, then the latest fix; a refusal stops sharing. */
  socketState(state, detail) {
    if (state === "live") {
      this.outbox.flush(); // what waited while offline goes first, then the latest fix
      this.send(true);
    }
    if (state === "error" && this.on) {
      this.stop();
      this.onProblem(`${this.texts.stopped}: ${detail}`);
    }
  }

  _fixed(position) {
    const first = this.fix === null;
    this.fix = position;
    this.onProblem("");
    this.onFix(position);
    if (first) this.send();
  }

  _fixFailed(error) {
    if (error.code === error.PERMISSION_DENIED) {
      this.stop();
      this.onProblem(this.texts.denied);
    } else if (error.code === error.POSITION_UNAVAILABLE) {
      this.onProblem(this.texts.unavailable);
    } else {
      this.onProblem(this.texts.waiting);
    }
  }

  _visibilityChanged() {
    if (!this.on) return;
    if (document.visibilityState === "hidden") {
      this.wasHidden = true;
    } else {
      this.send();
      if (this.wasHidden) toast(this.texts.resumed, "warning", 8000);
      this.wasHidden = false;
    }
  }
}
