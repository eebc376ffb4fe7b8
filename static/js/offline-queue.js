/**
 * The driver's offline queue (docs/protocol.md, "Offline batches"): fixes taken while the
 * socket is not live wait in IndexedDB, so a reload (or a crashed tab) keeps them.
 *
 * One queue per scope: "driver:<user id>" for the shift page's /ws/driver/ socket,
 * "parcel:<user id>:<parcel id>" for one parcel's page, so a phone shared by two drivers
 * never sends one's fixes as the other's. At most `max` fixes are kept per scope (the
 * newest); fixes older than `maxAgeMs` are dropped when read, since the server refuses a
 * whole batch for one stale entry. `batch()` gives them oldest first, ready for one
 * `location_batch`; `remove()` forgets them once the socket took the batch.
 *
 * A browser without IndexedDB (or with it blocked) gets the same interface kept in memory:
 * the fixes then survive a lost connection, not a reload.
 *
 * The same database holds the proofs of delivery waiting for a signal (store "proofs",
 * proof-outbox.js), which is why it is opened here once, at version 2.
 */

const DB_NAME = "parcel-tracking";
const STORE = "fixes";
const INDEX = "scope_time";
export const PROOFS = "proofs"; // proofs of delivery waiting for a signal (proof-outbox.js); added in version 2

function request(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

function done(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error || new Error("transaction aborted"));
  });
}

let opening = null;

function openDatabase() {
  if (!opening) {
    opening = new Promise((resolve, reject) => {
      if (!("indexedDB" in window)) return reject(new Error("no IndexedDB"));
      const req = indexedDB.open(DB_NAME, 2);
      req.onupgradeneeded = () => {
        const db = req.result;
        if (!db.objectStoreNames.contains(STORE)) {
          const store = db.createObjectStore(STORE, { keyPath: "id", autoIncrement: true });
          store.createIndex(INDEX, ["scope", "recorded_at"]);
        }
        if (!db.objectStoreNames.contains(PROOFS)) db.createObjectStore(PROOFS, { keyPath: "id", autoIncrement: true });
      };
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
      req.onblocked = () => reject(new Error("IndexedDB is blocked"));
    });
  }
  return opening;
}

/**
 * The shared database for a store's owner, or null once it cannot be opened: then `owner.memory`
 * becomes the list the owner keeps its entries in instead (until a reload).
 */
export async function databaseOr(owner) {
  if (owner.memory) return null;
  try {
    return await openDatabase();
  } catch {
    owner.memory = [];
    return null;
  }
}

export class OfflineQueue {
  /**
   * @param {string} scope whose fixes these are ("driver:5", "parcel:5:12")
   * @param {{max: number, maxAgeMs?: number}} limits the server's (from the page's data-rules); no maxAgeMs: none dropped for age
   */
  constructor(scope, { max, maxAgeMs }) {
    this.scope = scope;
    this.max = max;
    this.maxAgeMs = maxAgeMs ?? Infinity;
    this.memory = null; // the fallback when IndexedDB cannot be opened
    this.nextId = 1;
    this.lastTime = 0; // recorded_at strictly ascending, even if the device clock steps back
  }

  _db() {
    return databaseOr(this);
  }

  _range() {
    return IDBKeyRange.bound([this.scope, ""], [this.scope, "\uffff"]);
  }

  /** Keep one fix: {lat, lng, address?, accuracy?, heading?, speed?}; its recorded_at is now. */
  async add(fix) {
    const time = Math.max(Date.now(), this.lastTime + 1);
    this.lastTime = time;
    const entry = { ...fix, scope: this.scope, recorded_at: new Date(time).toISOString() };
    const db = await this._db();
    if (!db) {
      this.memory.push({ ...entry, id: this.nextId++ });
      this.memory.splice(0, Math.max(0, this.memory.length - this.max));
      return;
    }
    const tx = db.transaction(STORE, "readwrite");
    const store = tx.objectStore(STORE);
    store.add(entry);
    // Past the limit, the oldest go: the newest `max` are what the customer wants to see.
    const keys = await request(store.index(INDEX).getAllKeys(this._range()));
    for (const key of keys.slice(0, Math.max(0, keys.length - this.max))) store.delete(key);
    await done(tx);
  }

  /** How many fixes wait (stale ones included until the next batch() drops them). */
  async count() {
    const db = await this._db();
    if (!db) return this.memory.length;
    return request(db.transaction(STORE).objectStore(STORE).index(INDEX).count(this._range()));
  }

  /** The fixes to send, oldest first (at most `max`), after forgetting those too old to send. */
  async batch() {
    const oldest = Number.isFinite(this.maxAgeMs) ? new Date(Date.now() - this.maxAgeMs).toISOString() : "";
    const db = await this._db();
    if (!db) {
      this.memory = this.memory.filter((e) => e.recorded_at >= oldest);
      return this.memory.slice(0, this.max);
    }
    const tx = db.transaction(STORE, "readwrite");
    const index = tx.objectStore(STORE).index(INDEX);
    const entries = await request(index.getAll(this._range()));
    const fresh = [];
    for (const entry of entries) {
      if (entry.recorded_at < oldest) tx.objectStore(STORE).delete(entry.id);
      else fresh.push(entry);
    }
    await done(tx);
    return fresh.slice(0, this.max);
  }

  /** Forget these fixes (the entries batch() gave) once they were sent. */
  async remove(entries) {
    const ids = new Set(entries.map((e) => e.id));
    const db = await this._db();
    if (!db) {
      this.memory = this.memory.filter((e) => !ids.has(e.id));
      return;
    }
    const tx = db.transaction(STORE, "readwrite");
    for (const id of ids) tx.objectStore(STORE).delete(id);
    await done(tx);
  }
}

/**
 * The queue of `scope` by the server's rules (the page's data-rules): null when the server
 * gave no limit for it, and then fixes taken offline are dropped.
 */
export function queueFor(scope, rules) {
  if (!rules.max_offline_fixes) return null;
  return new OfflineQueue(scope, {
    max: rules.max_offline_fixes,
    maxAgeMs: rules.max_offline_age_s ? rules.max_offline_age_s * 1000 : undefined, // absent: the server judges age
  });
}

/** The `locations` of a location_batch: each entry as the protocol names its keys. */
export function batchLocations(entries) {
  return entries.map((e) => {
    const location = { lat: e.lat, lng: e.lng, address: e.address || "", recorded_at: e.recorded_at };
    for (const key of ["accuracy", "heading", "speed"]) if (Number.isFinite(e[key])) location[key] = e[key];
    return location;
  });
}

// The database and its promise helpers, for the other store (proof-outbox.js).
export { done, request };
