/**
 * The driven path (CONTRACT §7, "Pages"): the parcel's sampled history, fetched a page at
 * a time (docs/protocol.md, "Lists that page": `limit`, and the `Link: <…>; rel="next"`
 * header), drawn as one Leaflet polyline and extended live with every good fix.
 *
 * A long history (10,000 samples and more) must not freeze the page, so each page is
 * simplified before it is drawn (drop points closer than a few metres to the previous
 * one, then Douglas-Peucker) and the page gets an event-loop turn between pages. Every
 * sample (time and place) is kept for the replay; only the drawn line is simplified.
 * After a silence in the live fixes (a phone that was offline sends its fixes as one batch,
 * of which only the newest is broadcast; a page that was reconnecting), the gap is fetched
 * from the history with `since=`. A reconnect the server could not recover (docs/protocol.md,
 * "Recovery on reconnect": `"recovered": false`) may have missed anything, so the whole
 * history is fetched again and merged with what is drawn (reload()).
 */

const PAGE_LIMIT = 1000; // samples a page: small enough that each page is a short task
const MIN_STEP_M = 3; // a parked truck's GPS jitter is not a path
const TOLERANCE_M = 4; // how far the drawn line may stray from the samples
const EARTH_M = 6371008.8;
const GAP_MS = 15000; // live fixes further apart than this: the history may hold what came between
const BACKFILL_AFTER_MS = 1500; // the server writes samples on a short timer

/** Metres between two points (an equirectangular approximation: exact enough at city scale). */
export function metres(a, b) {
  const rad = Math.PI / 180;
  const x = (b.lng - a.lng) * rad * Math.cos(((a.lat + b.lat) / 2) * rad);
  const y = (b.lat - a.lat) * rad;
  return Math.hypot(x, y) * EARTH_M;
}

/** The URL of an RFC 8288 `rel="next"` link, as a same-origin path; null when there is none. */
export function nextLink(header) {
  if (!header) return null;
  for (const part of header.split(/,(?=\s*<)/)) { // a URL may hold commas; a new link starts with "<"
    const link = /^\s*<([^>]*)>(.*)$/.exec(part);
    const rel = link && /;\s*rel\s*=\s*(?:"([^"]*)"|([^;\s]+))/i.exec(link[2]);
    if (rel && (rel[1] ?? rel[2]).toLowerCase().split(/\s+/).includes("next")) {
      const url = new URL(link[1], location.href);
      return url.pathname + url.search;
    }
  }
  return null;
}

/** Points of a polyline simplified to within `tolerance` metres (Douglas-Peucker, no recursion). */
export function simplify(points, tolerance = TOLERANCE_M) {
  if (points.length <= 2) return points.slice();
  const rad = Math.PI / 180;
  const k = Math.cos(points[0].lat * rad);
  const xy = points.map((p) => [p.lng * rad * k * EARTH_M, p.lat * rad * EARTH_M]);
  const keep = new Uint8Array(points.length);
  keep[0] = keep[points.length - 1] = 1;
  const stack = [[0, points.length - 1]];
  while (stack.length) {
    const [first, last] = stack.pop();
    const [ax, ay] = xy[first];
    const [bx, by] = xy[last];
    const dx = bx - ax;
    const dy = by - ay;
    const length2 = dx * dx + dy * dy;
    let worst = -1;
    let index = -1;
    for (let i = first + 1; i < last; i += 1) {
      const [px, py] = xy[i];
      let t = length2 ? ((px - ax) * dx + (py - ay) * dy) / length2 : 0;
      t = Math.max(0, Math.min(1, t));
      const d = Math.hypot(px - ax - t * dx, py - ay - t * dy);
      if (d > worst) { worst = d; index = i; }
    }
    if (worst > tolerance) {
      keep[index] = 1;
      stack.push([first, index], [index, last]);
    }
  }
  return points.filter((_, i) => keep[i]);
}

const turn = () => new Promise((resolve) => setTimeout(resolve, 0));

/** The points worth drawing after `tail`: none closer than MIN_STEP_M to the one before. */
function drawable(points, tail) {
  const kept = [];
  for (const p of points) {
    if (tail && metres(tail, p) < MIN_STEP_M) continue;
    kept.push(p);
    tail = p;
  }
  return kept;
}

export class DrivenPath {
  /**
   * @param {L.Map} map
   * @param {string} historyUrl the first page (`…/locations/` or `/t/<token>/locations`)
   * @param {number} maxPage the largest `limit` the server takes (the rules' `history_page`)
   * @param {() => void} [onChange] called after the path grew (a page or a live point)
   */
  constructor(map, historyUrl, maxPage, onChange = () => {}) {
    this.map = map;
    this.historyUrl = historyUrl;
    this.pageLimit = Math.min(PAGE_LIMIT, maxPage || PAGE_LIMIT);
    this.onChange = onChange;
    this.samples = []; // every sample: {lat, lng, t} (t: ms), oldest first, for the replay
    this.drawn = []; // the simplified line's points
    this.waiting = []; // live points that came while the history was still loading
    this.loaded = false;
    this.backfilling = false;
    this.reloadTimer = null;
    this.line = window.L.polyline([], { className: "route-line route-path", interactive: false, smoothFactor: 1.5 })
      .addTo(map);
  }

  /** Fetch every page of the history, drawing each as it comes; live points wait until the end. */
  async load() {
    await this.fetchPages(null, (points) => this.append(points));
    this.loaded = true;
    const waiting = this.waiting;
    this.waiting = [];
    this.append(waiting);
  }

  /** The history after `since` (ms; null: all of it), page by page, each handed to `take`. */
  async fetchPages(since, take) {
    if (!this.historyUrl) return;
    const query = new URLSearchParams({ limit: String(this.pageLimit) });
    if (since !== null) query.set("since", new Date(since).toISOString());
    let url = `${this.historyUrl}${this.historyUrl.includes("?") ? "&" : "?"}${query}`;
    try {
      while (url) {
        const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
        if (!response.ok) break; // a link revoked meanwhile, a database away: the live part still draws
        const page = await response.json();
        take(page.locations.map((s) => ({ lat: s.lat, lng: s.lng, t: Date.parse(s.timestamp) })));
        url = nextLink(response.headers.get("Link"));
        await turn(); // let the map, the socket and the person have the page between two pages
      }
    } catch {
      // offline: draw what came, and the live part
    }
  }

  /** One good live fix (docs/protocol.md: a fix of `"quality": "low"` never gets here). After a
   * silence (an offline stretch the phone sent as a batch, a reconnection), the history of the
   * gap is fetched too, a moment later, once the server has written it. */
  addLive(lat, lng, timestamp) {
    const point = { lat, lng, t: Date.parse(timestamp) || Date.now() };
    if (!this.loaded) return this.waiting.push(point);
    const previous = this.samples.at(-1);
    if (!previous || point.t - previous.t > GAP_MS) this.backfill(previous ? previous.t : null);
    this.append([point]);
  }

  backfill(since) {
    if (this.backfilling) return;
    this.backfilling = true;
    setTimeout(async () => {
      const found = [];
      await this.fetchPages(since, (points) => found.push(...points));
      this.backfilling = false;
      this.merge(found);
    }, BACKFILL_AFTER_MS);
  }

  /** Add points newer than the last one: all kept as samples, drawn simplified. */
  append(points) {
    const lastT = this.samples.length ? this.samples.at(-1).t : -Infinity;
    const fresh = points.filter((p) => Number.isFinite(p.t) && p.t > lastT);
    if (!fresh.length) return;
    this.samples.push(...fresh);
    const start = this.drawn.at(-1);
    const added = drawable(fresh, start);
    if (added.length) {
      const simplified = simplify(start ? [start, ...added] : added);
      this.drawn.push(...(start ? simplified.slice(1) : simplified));
    }
    this.changed();
  }

  /** What came while the page was away may be missing: the whole history again, a moment later
   * (once the server has written the latest samples), merged with what is drawn. Merged, not
   * swapped in: the history keeps one fix in LOCATION_SAMPLE_EVERY (docs/protocol.md, "What is
   * stored"), so the live fixes already drawn stay, and nothing is drawn twice. */
  reload() {
    clearTimeout(this.reloadTimer);
    this.reloadTimer = setTimeout(async () => {
      const found = [];
      await this.fetchPages(null, (points) => found.push(...points));
      this.merge(found);
    }, BACKFILL_AFTER_MS);
  }

  /** Points from anywhere in time (a backfilled gap): merged in order, the line drawn again. */
  merge(points) {
    const known = new Set(this.samples.map((p) => p.t));
    const fresh = points.filter((p) => Number.isFinite(p.t) && !known.has(p.t));
    if (!fresh.length) return;
    this.samples = [...this.samples, ...fresh].sort((a, b) => a.t - b.t);
    this.drawn = simplify(drawable(this.samples, null));
    this.changed();
  }

  changed() {
    this.line.setLatLngs(this.drawn.map((p) => [p.lat, p.lng]));
    // How much is kept and how much is drawn, on #map for the browser tests.
    const box = this.map.getContainer().dataset;
    box.pathSamples = String(this.samples.length);
    box.pathPoints = String(this.drawn.length);
    this.onChange();
  }

  /** Where the path was at time t (interpolated between the samples around it). */
  at(t) {
    const s = this.samples;
    if (!s.length) return null;
    if (t <= s[0].t) return s[0];
    if (t >= s.at(-1).t) return s.at(-1);
    let lo = 0;
    let hi = s.length - 1;
    while (hi - lo > 1) {
      const mid = (lo + hi) >> 1;
      if (s[mid].t <= t) lo = mid; else hi = mid;
    }
    const k = (t - s[lo].t) / (s[hi].t - s[lo].t || 1);
    return { lat: s[lo].lat + (s[hi].lat - s[lo].lat) * k, lng: s[lo].lng + (s[hi].lng - s[lo].lng) * k, t };
  }

  /** The first and last sample's times, or null with fewer than two samples. */
  span() {
    return this.samples.length >= 2 ? [this.samples[0].t, this.samples.at(-1).t] : null;
  }
}
