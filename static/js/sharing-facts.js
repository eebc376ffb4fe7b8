/**
 * What both driver pages (/driver and /driver/parcels/<id>) show about sharing the
 * position: a problem (#geo-message), the fixes waiting offline (#queue-count), when a fix
 * last went out (#last-sent, kept current every second) and the device's accuracy
 * (#accuracy); the first two are templates/_sharing_alerts.html. Also the status buttons' one
 * sequence of messages ("Saving …", "Marked as …", "Could not change the status: …").
 */

import { setParcelStatus } from "./api.js";
import { clock, duration, everySecond, plural, toast } from "./ui.js";

const $ = (id) => document.getElementById(id);

export class SharingFacts {
  constructor() {
    this.lastSent = null; // when a fix last went out (ms)
    everySecond(() => this.showLastSent());
  }

  /** What keeps the position from being shared; "" hides it. */
  problem(text) {
    $("geo-message").textContent = text;
    $("geo-message").hidden = !text;
  }

  /** How many fixes wait in the offline queue (hidden at 0). */
  waiting(count) {
    const box = $("queue-count");
    box.hidden = count === 0;
    box.textContent = `${plural(count, "position", "positions")} waiting to be sent`;
  }

  /** `count` fixes went out (`batched`: those kept while offline, which the driver is told of). */
  sent(count, batched) {
    this.lastSent = Date.now();
    this.showLastSent();
    if (batched) toast(`Sent ${plural(count, "position", "positions")} kept while offline`, "success");
  }

  showLastSent() {
    const el = $("last-sent");
    el.textContent = this.lastSent ? `${duration(Date.now() - this.lastSent)} ago` : "Not yet";
    el.title = this.lastSent ? `at ${clock(this.lastSent)}` : "";
  }

  /** The device's latest fix (a GeolocationPosition). */
  fix(position) {
    const c = position.coords;
    $("accuracy").textContent = Number.isFinite(c.accuracy) ? `±${Math.round(c.accuracy)} m` : "Unknown";
  }
}

/**
 * A status button pressed: POST its status for `parcelId`, telling `say` what happens.
 * → the parcel's new status, or null when it was refused (`say` has the reason).
 */
export async function pressStep(parcelId, button, labels, say, details = {}) {
  say(`Saving “${button.firstChild.textContent.trim()}”…`);
  try {
    const body = await setParcelStatus(parcelId, button.dataset.status, details);
    say(`Marked as ${(labels[body.status] || body.status).toLowerCase()}.`);
    return body.status;
  } catch (error) {
    say(`Could not change the status: ${error.message}.`);
    return null;
  }
}
