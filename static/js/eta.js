/**
 * The ETA as people read it (docs/protocol.md, "What a broadcast carries beyond the
 * basics"): the server's estimate `{seconds, distance_m, to}` rounded to what it can
 * honestly promise ("about 12 min", "about 1 h 20 min"), and nothing at all when it is
 * null. Pure functions: no DOM, no clock.
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

/** The sentence for an ETA, or "" when there is none (unknown is shown as nothing). */
export function etaSentence(eta) {
  return known(eta) ? `Driver arrives at ${placeName(eta.to)} in ${roughDuration(eta.seconds)}` : "";
}

/** A driver's stop: "About 12 min to the pickup (1.2 km)", or "". */
export function etaForStop(eta) {
  if (!known(eta)) return "";
  const away = Number.isFinite(eta.distance_m) && eta.distance_m >= 0 ? ` (${roughDistance(eta.distance_m)})` : "";
  return `A${roughDuration(eta.seconds).slice(1)} to ${placeName(eta.to)}${away}`;
}

/** The smaller print under it: "3.1 km away", or "". */
export function etaDetail(eta) {
  if (!eta || !Number.isFinite(eta.distance_m) || eta.distance_m < 0) return "";
  return `${roughDistance(eta.distance_m)} away`;
}
