/**
 * What every live page shares: the connection pill, toasts, the status text
 * and "… ago" times. Everything shown is set with textContent, never as HTML:
 * addresses are text typed by people.
 */

const PILL_TEXT = { connecting: "Connecting", live: "Live", offline: "Offline", error: "Error" };

/** Show a connection state in the pill (#connection), as text and as a colour. */
export function showConnection(state, detail = "") {
  const pill = document.getElementById("connection");
  pill.dataset.state = state;
  document.getElementById("connection-text").textContent = PILL_TEXT[state] || state;
  const detailEl = document.getElementById("connection-detail");
  if (detailEl) detailEl.textContent = detail ? `${PILL_TEXT[state] || state}: ${detail}` : "";
  pill.title = detail;
}

/** A short message at the bottom of the screen, read out by screen readers. */
export function toast(text, kind = "info", ms = 5000) {
  const box = document.getElementById("toasts");
  const item = document.createElement("div");
  item.className = `toast toast-${kind}`;
  item.textContent = text;
  box.append(item);
  while (box.children.length > 4) box.firstElementChild.remove();
  setTimeout(() => item.remove(), ms);
}

/** Parse a data-* attribute holding JSON (the server escapes it; the browser unescapes it). */
export function dataJSON(element, name) {
  return JSON.parse(element.dataset[name] || "null");
}

/** The status as people read it, into #parcel-status (text and a class for its colour). */
export function showStatus(status, labels) {
  const el = document.getElementById("parcel-status");
  el.dataset.status = status;
  el.className = `status status-${status}`;
  el.textContent = labels[status] || status;
}

/** "12 s", "3 min", "2 h 5 min" */
export function duration(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min`;
  const h = Math.floor(m / 60);
  return m % 60 ? `${h} h ${m % 60} min` : `${h} h`;
}

/** "1 parcel", "3 parcels" */
export function plural(n, one, many) {
  return `${n} ${n === 1 ? one : many}`;
}

/** A local clock time such as 10:15:30. */
export function clock(time) {
  return new Date(time).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

/** Every `<time datetime data-local>` under `root` as the reader's local day and time ("8 Jan, 14:00"). */
export function localTimes(root = document) {
  for (const time of root.querySelectorAll("time[data-local]")) {
    time.textContent = new Date(time.dateTime).toLocaleString([], {
      day: "numeric", month: "short", hour: "2-digit", minute: "2-digit" });
  }
}

/** Call fn now and then every second (for "… ago" texts). */
export function everySecond(fn) {
  fn();
  return setInterval(fn, 1000);
}
