/**
 * The ETA as people read it (docs/protocol.md, "What a broadcast carries beyond the
 * basics"): the server's estimate `{seconds, distance_m, to, confidence, range}` worded as
 * surely as the server says it is: "about 12 min" when its confidence is high (or not
 * given: an older server), "12–15 min" (its range) when medium, "roughly 15 min, still
 * estimating" when low; nothing at all when it is null. Pure functions: no DOM, no clock.
 */

/** "about 1 min" … "about 59 min", then in 5-minute steps: "about 1 h 20 min", "about 2 h". */
export function roughDuration(seconds) {
  const minutes = Math.max(1, Math.round(seconds / 60));
  if (minutes < 60) return `about ${minutes} min`;
  const rounded = Math.round(minutes / 5) * 5; // past an hour, minutes are noise
  const h = Math.floor(rounded / 60);
  const m = rounded % 60;
  return m ? `about ${h} h ${m} min` : `about ${h} h`;
}

/** "1.2 km" or "300 m" (to the nearest 100 m under 10 km, else whole kilometres). */
export function roughDistance(metres) {
  if (metres < 1000) return `${Math.max(100, Math.round(metres / 100) * 100)} m`;
  return metres < 10000 ? `${(Math.round(metres / 100) / 10).toFixed(1)} km` : `${Math.round(metres / 1000)} km`;
}

/** "the pickup" or "the destination": where an ETA or a geofence `zone` points. */
export function placeName(zone) {
  return zone === "pickup" ? "the pickup" : "the destination";
}

const known = (eta) => Boolean(eta) && Number.isFinite(eta.seconds) && eta.seconds >= 0;

/** "12 min", "1 h 20 min": a duration without its "about". */
const bare = (seconds) => roughDuration(seconds).slice("about ".length);

/**
 * How long, as surely as the server is: "about 12 min" (high), "12–15 min" (medium, its
 * range), "roughly 15 min, still estimating" (low).
 */
export function etaDuration(eta) {
  const [low, high] = Array.isArray(eta.range) ? eta.range : [];
  if (eta.confidence === "low") return `roughly ${bare(eta.seconds)}, still estimating`;
  if (eta.confidence === "medium" && Number.isFinite(low) && Number.isFinite(high)) {
    const [from, to] = [bare(Math.min(low, eta.seconds)), bare(Math.max(high, eta.seconds))];
    if (from !== to) {
      // "12–15 min" reads better than "12 min–15 min"; past an hour each end keeps its units
      return from.endsWith(" min") && to.endsWith(" min") && !from.includes("h") && !to.includes("h")
        ? `${from.slice(0, -" min".length)}–${to}`
        : `${from} – ${to}`;
    }
  }
  return roughDuration(eta.seconds);
}

/** The sentence for an ETA, or "" when there is none (unknown is shown as nothing). */
export function etaSentence(eta) {
  return known(eta) ? `Driver arrives at ${placeName(eta.to)} in ${etaDuration(eta)}` : "";
}

/**
 * A driver's stop: "About 12 min to the pickup (1.2 km)", "12–15 min to the pickup (1.2 km)",
 * "Roughly 15 min to the pickup (1.2 km), still estimating", or "".
 */
export function etaForStop(eta) {
  if (!known(eta)) return "";
  const away = Number.isFinite(eta.distance_m) && eta.distance_m >= 0 ? ` (${roughDistance(eta.distance_m)})` : "";
  const [duration, unsure] = etaDuration(eta).split(", ");
  const text = `${duration.charAt(0).toUpperCase()}${duration.slice(1)} to ${placeName(eta.to)}${away}`;
  return unsure ? `${text}, ${unsure}` : text;
}

/** The smaller print under it: "3.1 km away", or "". */
export function etaDetail(eta) {
  if (!eta || !Number.isFinite(eta.distance_m) || eta.distance_m < 0) return "";
  return `${roughDistance(eta.distance_m)} away`;
}
