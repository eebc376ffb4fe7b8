/**
 * Deliveries with a proof that wait for a signal (docs/protocol.md, "Proof of delivery"): a
 * driver without a signal must not lose a proof. A confirmed delivery's proof (the photo and
 * the signature as Blobs, the receiver's name) is kept in IndexedDB, in the offline queue's
 * database (offline-queue.js, store "proofs"), before it is sent; it is forgotten once the
 * server took it, or refused it for good. What could not be sent goes out when the phone is
 * back online (the `online` event, a try every RETRY_MS, and the next driver page loaded):
 * first the proof (POST /api/parcels/<id>/proof/), then the status `delivered`.
 *
 * One outbox per driver ("proof:<user id>"), so a phone shared by two drivers never sends one's
 * proof as the other's. Sends never overlap: each waits for the one before it.
 */

import { databaseOr, done, PROOFS, request } from "./offline-queue.js";

const RETRY_MS = 30_000;
const xsrfToken = () => document.querySelector('meta[name="xsrf-token"]')?.content || "";

/** What a server's answer means for a waiting proof: sent, to try again later, or refused for good. */
function outcome(response, answer) {
  if (response.ok) return { state: "sent", answer };
  if (response.status === 401 || response.status === 429 || response.status >= 500) return { state: "waiting" };
  return { state: "refused", message: answer.error || `the server answered ${response.status}` };
}

async function post(url, body, headers = {}) {
  if (navigator.onLine === false) return { state: "waiting" };
  let response;
  try {
    response = await fetch(url, {
      method: "POST", credentials: "same-origin", body, headers: { "X-XSRFToken": xsrfToken(), ...headers },
    });
  } catch {
    return { state: "waiting" }; // no connection
  }
  return outcome(response, await response.json().catch(() => ({})));
}

/** POST a proof: its photo, signature and receiver's name as multipart/form-data. */
export function sendProof(entry) {
  const form = new FormData();
  if (entry.photo) form.append("photo", entry.photo, "photo.jpg");
  if (entry.signature) form.append("signature", entry.signature, "signature.png");
  if (entry.receivedBy) form.append("received_by", entry.receivedBy);
  return post(`/api/parcels/${entry.parcelId}/proof/`, form);
}

function markDelivered(parcelId) {
  return post(`/api/parcels/${parcelId}/status/`, JSON.stringify({ status: "delivered" }),
    { "Content-Type": "application/json" });
}

export class ProofOutbox {
  /**
   * @param {string} scope whose proofs these are ("proof:5")
   * @param {object} [hooks]
   * @param {(entries: object[]) => void} [hooks.onWaiting] the entries waiting, after every change
   * @param {(parcelId: number, status: string|null) => void} [hooks.onDelivered] a waiting delivery went through
   * @param {(parcelId: number, message: string, proofSent: boolean) => void} [hooks.onRefused] the server refused it
   */
  constructor(scope, { onWaiting, onDelivered, onRefused } = {}) {
    this.scope = scope;
    this.onWaiting = onWaiting || (() => {});
    this.onDelivered = onDelivered || (() => {});
    this.onRefused = onRefused || (() => {});
    this.memory = null; // the fallback when IndexedDB cannot be opened: kept until a reload
    this.nextId = 1;
    this.busy = Promise.resolve();
    window.addEventListener("online", () => this.flush());
    setInterval(() => this.flush(), RETRY_MS);
  }

  /** Run `work` after every send before it (sends never overlap). */
  _exclusive(work) {
    const run = this.busy.then(work, work);
    this.busy = run.catch(() => {});
    return run;
  }

  _db() {
    return databaseOr(this);
  }

  async entries() {
    const db = await this._db();
    const all = db ? await request(db.transaction(PROOFS).objectStore(PROOFS).getAll()) : this.memory;
    return all.filter((entry) => entry.scope === this.scope);
  }

  async _put(entry) {
    const db = await this._db();
    if (!db) {
      if (entry.id === undefined) entry.id = this.nextId++;
      this.memory = [...this.memory.filter((e) => e.id !== entry.id), entry];
      return entry;
    }
    const tx = db.transaction(PROOFS, "readwrite");
    const key = await request(tx.objectStore(PROOFS).put(entry));
    await done(tx);
    return { ...entry, id: key };
  }

  async _remove(entry) {
    const db = await this._db();
    if (!db) {
      this.memory = this.memory.filter((e) => e.id !== entry.id);
      return;
    }
    const tx = db.transaction(PROOFS, "readwrite");
    tx.objectStore(PROOFS).delete(entry.id);
    await done(tx);
  }

  async _changed() {
    this.onWaiting(await this.entries());
  }

  /**
   * A delivery confirmed now with its proof {parcelId, photo, signature, receivedBy}: kept, then
   * its proof sent. → {state: "sent"} (the caller marks it delivered), {state: "waiting"} (kept:
   * it goes out, then the status, once there is a signal), or {state: "refused", message}. It
   * replaces a delivery of the same parcel still waiting, as a new proof replaces the last.
   */
  deliver(proof) {
    return this._exclusive(async () => {
      for (const old of await this.entries()) if (old.parcelId === proof.parcelId) await this._remove(old);
      const entry = await this._put({ ...proof, scope: this.scope, proofSent: false, savedAt: new Date().toISOString() });
      const sent = await sendProof(entry);
      if (sent.state !== "waiting") await this._remove(entry);
      await this._changed();
      return sent;
    });
  }

  /** Send what waits, oldest first, while the server answers. */
  flush() {
    return this._exclusive(async () => {
      const waiting = (await this.entries()).sort((a, b) => a.id - b.id);
      for (const entry of waiting) {
        if (!entry.proofSent) {
          const sent = await sendProof(entry);
          if (sent.state === "waiting") break;
          if (sent.state === "refused") {
            await this._remove(entry);
            this.onRefused(entry.parcelId, sent.message, false);
            continue;
          }
          entry.proofSent = true;
          entry.photo = entry.signature = null; // the server has them now
          await this._put(entry);
        }
        const marked = await markDelivered(entry.parcelId);
        if (marked.state === "waiting") break;
        await this._remove(entry);
        if (marked.state === "sent") this.onDelivered(entry.parcelId, marked.answer.status);
        else this.onRefused(entry.parcelId, marked.message, true);
      }
      await this._changed();
    });
  }
}
