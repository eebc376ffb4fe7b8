/**
 * Browser notifications for a recipient (CONTRACT §7, "Pages"): with the person's
 * permission (asked by the "Notify me" button, never on load), a notification for a
 * status change or the driver entering a geofence, raised only while the tab is hidden
 * (on screen, the page says it already).
 *
 * Where the page's `Notification` constructor throws (Chrome for Android: "Illegal
 * constructor"), the same notification is shown through a service worker
 * (static/js/sw.js, registered from /static/js/, so it controls no page) and its
 * `registration.showNotification`. No push service: nothing arrives while the page is closed.
 */

export class Notifier {
  /**
   * @param {HTMLButtonElement} button the "Notify me" button
   * @param {HTMLElement} [note] where to say what the button did
   * @param {string} swUrl the service worker's script, under /static/
   */
  constructor(button, note, swUrl) {
    this.button = button;
    this.note = note;
    this.swUrl = swUrl;
    this.registration = null;
    // The texts are the template's: its own until permission is asked, then data-granted or data-denied.
    this.texts = { button: button ? button.textContent : "", note: note ? note.textContent : "" };
    if (!button) return;
    button.hidden = !("Notification" in window);
    button.addEventListener("click", () => this.ask());
    this.show();
    if (this.permission === "granted") this.prepare();
  }

  get permission() {
    return "Notification" in window ? window.Notification.permission : "denied";
  }

  /** The button and the note say what notifications will do. */
  show() {
    const state = this.permission;
    this.button.textContent = this.button.dataset[state] || this.texts.button;
    this.button.disabled = state !== "default";
    this.button.setAttribute("aria-pressed", String(state === "granted"));
    if (this.note) this.note.textContent = this.note.dataset[state] || this.texts.note;
  }

  async ask() {
    try {
      // An old Safari takes a callback and returns nothing; every other browser returns a promise.
      await new Promise((resolve) => {
        const answer = window.Notification.requestPermission(resolve);
        if (answer && answer.then) answer.then(resolve, resolve);
      });
    } catch {
      // refused to ask: shown as the permission is
    }
    this.show();
    if (this.permission === "granted") this.prepare();
  }

  /** Register the worker as soon as notifications are allowed, so it is ready should the constructor throw. */
  prepare() {
    if ("serviceWorker" in navigator && this.swUrl) this.worker().catch(() => {});
  }

  /** Raise a notification if the person allowed them and is not looking at the page; true if raised. */
  async notify(title, body, tag) {
    if (this.permission !== "granted" || document.visibilityState !== "hidden") return false;
    const options = { body, tag, data: { url: location.href } };
    try {
      const shown = new window.Notification(title, options);
      shown.onclick = () => { window.focus(); shown.close(); };
      return true;
    } catch {
      // Chrome for Android: only a service worker may show one
    }
    try {
      const registration = await this.worker();
      await registration.showNotification(title, options);
      return true;
    } catch {
      return false;
    }
  }

  /** The service worker's registration, once it has an active worker (showNotification needs one). */
  async worker() {
    if (!this.registration) this.registration = navigator.serviceWorker.register(this.swUrl);
    const registration = await this.registration;
    if (registration.active) return registration;
    const worker = registration.installing || registration.waiting;
    await new Promise((resolve) => {
      if (!worker) return resolve();
      worker.addEventListener("statechange", () => { if (worker.state === "activated") resolve(); });
    });
    return registration;
  }
}
