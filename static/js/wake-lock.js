/**
 * Keeping a driver's screen on (the Screen Wake Lock API) while positions are shared.
 *
 * `hold()` asks for the lock; the browser drops it whenever the page is hidden, so it is
 * asked for again each time the page becomes visible while wanted. `onChange(state)`
 * hears "on", "off", "unsupported" (this browser has no wake lock) or "refused" (it has
 * one but said no: a battery saver, a frame), so the page can tell the driver to keep
 * the screen on themselves.
 */

export class ScreenWakeLock {
  constructor(onChange) {
    this.onChange = onChange || (() => {});
    this.wanted = false;
    this.lock = null;
    this.supported = "wakeLock" in navigator;
    document.addEventListener("visibilitychange", () => {
      if (this.wanted && document.visibilityState === "visible") this._request();
    });
  }

  hold() {
    this.wanted = true;
    return this._request();
  }

  release() {
    this.wanted = false;
    const lock = this.lock;
    this.lock = null;
    if (lock) lock.release().catch(() => {});
    this.onChange("off");
  }

  async _request() {
    if (!this.supported) {
      this.onChange("unsupported");
      return;
    }
    if (this.lock && !this.lock.released) return;
    try {
      const lock = await navigator.wakeLock.request("screen");
      if (!this.wanted) {
        lock.release().catch(() => {});
        return;
      }
      this.lock = lock;
      this.onChange("on");
      lock.addEventListener("release", () => {
        if (this.lock === lock) this.lock = null;
        if (this.wanted) this.onChange("off"); // hidden: asked for again when visible
      });
    } catch (error) {
      this.onChange("refused", error && error.message);
    }
  }
}
