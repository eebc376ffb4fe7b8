/**
 * Where a driver's page hands each fix: straight onto the socket while it is live, else
 * into the offline queue (docs/protocol.md, "Offline batches"); once live again the queue
 * goes out as `location_batch` messages, oldest first, and only then do live fixes go
 * out one by one again, so the server always receives the fixes in the order taken.
 *
 * "Live" means the socket says so and the browser believes it is online: a socket can
 * look open for a while after the network went (a tunnel), and what is sent then is lost.
 * A batch is forgotten once the socket took it; send() → false keeps it for the next try.
 */

import { batchLocations } from "./offline-queue.js";

export class Outbox {
  /**
   * @param {object} options
   * @param {import("./tracking-socket.js").TrackingSocket} options.socket
   * @param {import("./offline-queue.js").OfflineQueue|null} options.queue null: no queue, fixes taken offline are dropped
   * @param {number} [options.parcelId] the parcel of a /ws/tracking/ socket (omitted on /ws/driver/)
   * @param {(waiting: number) => void} [options.onWaiting] how many fixes wait, after every change
   * @param {(count: number, batched: boolean) => void} [options.onSent]
   */
  constructor({ socket, queue, parcelId, onWaiting, onSent }) {
    this.socket = socket;
    this.queue = queue;
    this.parcelId = parcelId;
    this.onWaiting = onWaiting || (() => {});
    this.onSent = onSent || (() => {});
    this.waiting = 0;
    this.flushing = null; // the running flush, so two never interleave
    window.addEventListener("online", () => this.flush());
  }

  live() {
    return this.socket.state === "live" && navigator.onLine !== false;
  }

  /** One fix {lat, lng, accuracy?, heading?, speed?}: sent now, or kept. → "sent" | "queued" | "dropped" */
  async deliver(fix) {
    if (this.flushing) await this.flushing; // what waited goes first
    if (this.live() && this.waiting === 0) {
      if (this.socket.sendLocationUpdate(fix.lat, fix.lng, fix)) {
        this.onSent(1, false);
        return "sent";
      }
    }
    if (!this.queue) return "dropped";
    await this.queue.add(fix);
    await this.countWaiting();
    this.flush();
    return "queued";
  }

  /** Read how many fixes wait (the page shows it at once, even before a shift starts). */
  async countWaiting() {
    this.waiting = this.queue ? await this.queue.count() : 0;
    this.onWaiting(this.waiting);
    return this.waiting;
  }

  /** Send what waits, as batches, while the socket stays live. */
  flush() {
    if (!this.queue) return Promise.resolve();
    if (!this.flushing) this.flushing = this._flush().finally(() => { this.flushing = null; });
    return this.flushing;
  }

  async _flush() {
    while (this.live()) {
      const entries = await this.queue.batch();
      if (!entries.length) break;
      const message = { type: "location_batch", locations: batchLocations(entries) };
      if (this.parcelId !== undefined) message.parcel_id = this.parcelId;
      if (!this.socket.send(message)) break;
      await this.queue.remove(entries);
      this.onSent(entries.length, true);
    }
    await this.countWaiting();
  }
}
