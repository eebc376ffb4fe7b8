/**
 * The driver's shift: ONE sharing state across the driver's pages, /driver (shift.js) and
 * /driver/parcels/<id> (driver.js). docs/protocol.md, "The driver socket" and "Pages".
 *
 * Both pages open the same route socket, /ws/driver/, and share the device position with
 * every active parcel at once (position-sharing.js), keeping what is taken offline in one
 * queue ("driver:<id>", offline-queue.js, outbox.js). Whether the shift is on is remembered
 * for the tab, per driver (sessionStorage): a driver page opened while it is on starts
 * sharing again at once, so opening a parcel or going back to the list does not end it.
 * Only turning it off (on either page), a refusal (location denied, the socket refused) or
 * logging out ends it. sessionStorage rather than localStorage: a shift lives as long as the
 * tab it was started in, so a browser opened the next morning does not share by itself.
 *
 * The shift keeps the active parcels ("subscribed", then "parcels") and the latest good fix
 * (no less accurate than the server's `good_fix_accuracy_m`), which the "Delivered"
 * confirmation measures from (deliver-confirm.js). The page shows everything through callbacks.
 */

import { queueFor } from "./offline-queue.js";
import { Outbox } from "./outbox.js";
import { PositionSharing } from "./position-sharing.js";
import { TrackingSocket } from "./tracking-socket.js";

const TEXTS = {
  denied: "Location permission is denied, so your shift is off. Allow location for this site in your " +
    "browser's settings, then start your shift again.",
  unavailable: "Your position is unavailable right now (no GPS signal?). Your shift stays on and sends as soon " +
    "as a position comes.",
  waiting: "Still waiting for a GPS position. Your shift stays on.",
  resumed: "Your shift resumed. Positions pause while this page is in the background.",
  stopped: "Your shift stopped",
};

export class Shift {
  /**
   * @param {object} options
   * @param {string} options.driverId whose shift (the remembered state and the offline queue are per driver)
   * @param {string} options.wsUrl PUBLIC_WS_URL ("" → this page's origin)
   * @param {object} options.rules the page's data-rules (send_every_s, the queue's limits, good_fix_accuracy_m)
   * @param {import("./sharing-facts.js").SharingFacts} options.facts where problems, waiting and sent fixes are shown
   * @param {(on: boolean) => void} options.onChange the shift turned on or off
   * @param {(ids: number[]) => void} [options.onParcels] the active parcels, on connect and whenever they change
   * @param {(position: GeolocationPosition) => void} [options.onFix]
   * @param {(state: string, detail: string) => void} options.onState the socket's state
   * @param {(state: string, why?: string) => void} options.onWake the wake lock's state
   * @param {(text: string) => void} [options.onProblem] what keeps the position from going out ("" clears it);
   *   by default `facts.problem`
   * @param {object} [options.socket] more TrackingSocket callbacks: onLocation, onStatus, onMessage, onError
   */
  constructor({ driverId, wsUrl, rules, facts, onChange, onParcels = () => {}, onFix = () => {}, onState, onWake,
    onProblem = (text) => facts.problem(text), socket = {} }) {
    const sendEveryMs = rules.send_every_s * 1000;
    this.key = `shift:${driverId}`;
    this.goodAccuracy = rules.good_fix_accuracy_m;
    this.active = []; // the driver's active parcel ids, in the server's order
    this.lastGood = null; // {lat, lng}: the latest fix accurate enough to measure from
    this.socket = new TrackingSocket({
      ...socket,
      path: "/ws/driver/",
      wsUrl,
      onState: (state, detail) => {
        onState(state, detail);
        this.sharing.socketState(state, detail);
      },
      onMessage: (message) => {
        if (message.type === "subscribed" || message.type === "parcels") {
          const had = this.active.length;
          this.active = (message.parcels || []).map(Number);
          onParcels(this.active);
          if (!had && this.active.length) this.sharing.send(true); // the fix waited for a parcel to go to
        }
        if (socket.onMessage) socket.onMessage(message);
      },
    });
    this.outbox = new Outbox({
      socket: this.socket,
      queue: queueFor(`driver:${driverId}`, rules),
      onWaiting: (count) => facts.waiting(count),
      onSent: (count, batched) => facts.sent(count, batched),
    });
    this.sharing = new PositionSharing({
      socket: this.socket,
      outbox: this.outbox,
      sendEveryMs,
      minGapMs: sendEveryMs * 0.9, // at most one fix every send_every_s, but at once when the socket comes back
      texts: TEXTS,
      canSend: () => this.active.length > 0,
      onChange: (on, { leaving }) => {
        if (!leaving) this._remember(on); // leaving the page keeps the shift on for the next page
        onChange(on);
      },
      onFix: (position) => {
        const c = position.coords;
        if (!(c.accuracy > this.goodAccuracy)) this.lastGood = { lat: c.latitude, lng: c.longitude };
        onFix(position);
      },
      onProblem,
      onWake,
    });
    // A page brought back from the browser's cache: its shift was stopped when it was left.
    window.addEventListener("pageshow", (event) => { if (event.persisted) this.resume(); });
  }

  get on() {
    return this.sharing.on;
  }

  toggle() {
    this.sharing.toggle();
  }

  /** Start sharing again if the shift was on when the driver's last page was left. */
  resume() {
    if (this.remembered() && !this.sharing.on) this.sharing.start();
  }

  remembered() {
    try {
      return sessionStorage.getItem(this.key) === "on";
    } catch {
      return false; // storage blocked: the shift then lasts as long as the page
    }
  }

  _remember(on) {
    try {
      if (on) sessionStorage.setItem(this.key, "on");
      else sessionStorage.removeItem(this.key);
    } catch {
      // storage blocked: nothing to remember with
    }
  }
}
