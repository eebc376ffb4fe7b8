/**
 * The vertical status timeline of a parcel (CONTRACT §7, "Timeline"): every status it
 * has been in with its time, oldest first, then the steps still to come, dimmed. The
 * labels, the order of statuses and which ones finish a parcel come from the server's
 * rules; times are shown in the reader's own time zone.
 */

function when(timestamp) {
  if (!timestamp) return "";
  const date = new Date(timestamp);
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (date.toDateString() === new Date().toDateString()) return time;
  return `${date.toLocaleDateString([], { day: "numeric", month: "short" })}, ${time}`;
}

export class Timeline {
  /**
   * @param {HTMLOListElement} list the <ol> to fill (templates/_timeline.html)
   * @param {{labels: object, order: string[], finished: Set<string>}} rules
   * @param {{status: string, timestamp: string|null}[]} steps the parcel's timeline
   */
  constructor(list, { labels, order, finished }, steps) {
    this.list = list;
    this.labels = labels;
    this.order = order || [];
    this.finished = finished;
    this.steps = [...(steps || [])];
  }

  /** A new status (a `status` message): added once, then drawn again. */
  add(status, timestamp) {
    const last = this.steps.at(-1);
    if (last && last.status === status) return;
    this.steps.push({ status, timestamp: timestamp || null });
    this.render();
  }

  /** When the parcel reached `status` (its latest time), or null. */
  timeOf(status) {
    const step = this.steps.findLast((s) => s.status === status);
    return step ? step.timestamp : null;
  }

  /** The steps still to come: the active statuses after the current one, then the first finishing one. */
  upcoming() {
    const current = this.steps.at(-1)?.status;
    if (!current || this.finished.has(current)) return [];
    const later = this.order.slice(this.order.indexOf(current) + 1);
    const end = later.find((s) => this.finished.has(s));
    return [...later.filter((s) => !this.finished.has(s)), ...(end ? [end] : [])];
  }

  render() {
    if (!this.list) return;
    const items = this.steps.map((step, i) => this.item(step.status, step.timestamp,
      i === this.steps.length - 1 ? "is-current" : "is-done"));
    for (const status of this.upcoming()) items.push(this.item(status, null, "is-next"));
    this.list.replaceChildren(...items);
  }

  item(status, timestamp, state) {
    const li = document.createElement("li");
    li.className = `timeline-step ${state}`;
    li.dataset.status = status;
    const dot = document.createElement("span");
    dot.className = "timeline-dot";
    dot.setAttribute("aria-hidden", "true");
    const label = document.createElement("span");
    label.className = "timeline-label";
    label.textContent = this.labels[status] || status;
    li.append(dot, label);
    if (timestamp) {
      const time = document.createElement("time");
      time.className = "timeline-time";
      time.dateTime = timestamp;
      time.textContent = when(timestamp);
      li.append(time);
    } else if (state === "is-next") {
      const next = document.createElement("span");
      next.className = "visually-hidden";
      next.textContent = " (not yet)";
      li.append(next);
    }
    if (state === "is-current") li.setAttribute("aria-current", "step");
    return li;
  }
}
