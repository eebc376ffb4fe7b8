/**
 * A signature drawn on a <canvas> with a finger, a stylus or a mouse (pointer events, so one
 * code path for all three), exported as a PNG: dark strokes on a transparent background. The
 * canvas's CSS sets `touch-action: none`, so drawing never scrolls the page. The strokes are
 * kept as points in CSS pixels and drawn again when the canvas changes size (a phone turned
 * round), at up to twice the CSS resolution for a sharp line on a dense screen.
 */

const INK = "#111827";
const LINE_WIDTH = 2.5; // CSS px
const MAX_SCALE = 2; // backing pixels per CSS pixel: sharp enough, and the PNG stays small

export class SignaturePad {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {{onChange?: (empty: boolean) => void}} [options] called after every stroke and every clear
   */
  constructor(canvas, { onChange } = {}) {
    this.canvas = canvas;
    this.onChange = onChange || (() => {});
    this.strokes = []; // [[{x, y}, ...], ...] in CSS px
    this.current = null;
    this.pointerId = null;
    canvas.addEventListener("pointerdown", (e) => this._down(e));
    canvas.addEventListener("pointermove", (e) => this._move(e));
    for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) {
      canvas.addEventListener(type, (e) => this._up(e));
    }
    new ResizeObserver(() => this.resize()).observe(canvas);
  }

  get empty() {
    return this.strokes.length === 0;
  }

  clear() {
    this.strokes = [];
    this.current = null;
    this.redraw();
    this.onChange(true);
  }

  /** Match the backing store to the canvas's size on screen, and draw the strokes again. */
  resize() {
    const box = this.canvas.getBoundingClientRect();
    if (!box.width || !box.height) return; // not shown (a closed dialog)
    this.scale = Math.min(MAX_SCALE, Math.max(1, window.devicePixelRatio || 1));
    const width = Math.round(box.width * this.scale);
    const height = Math.round(box.height * this.scale);
    if (this.canvas.width !== width || this.canvas.height !== height) {
      this.canvas.width = width;
      this.canvas.height = height;
    }
    this.redraw();
  }

  redraw() {
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    ctx.setTransform(this.scale || 1, 0, 0, this.scale || 1, 0, 0);
    ctx.strokeStyle = INK;
    ctx.fillStyle = INK;
    ctx.lineWidth = LINE_WIDTH;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    for (const stroke of this.strokes) this._draw(ctx, stroke, 0);
  }

  /** The signature as a PNG Blob, or null when nothing was drawn. */
  toBlob() {
    if (this.empty) return Promise.resolve(null);
    return new Promise((resolve) => this.canvas.toBlob(resolve, "image/png"));
  }

  _point(event) {
    const box = this.canvas.getBoundingClientRect();
    return { x: event.clientX - box.left, y: event.clientY - box.top };
  }

  _down(event) {
    if (this.pointerId !== null || (event.pointerType === "mouse" && event.button !== 0)) return;
    event.preventDefault();
    this.pointerId = event.pointerId;
    this.canvas.setPointerCapture(event.pointerId);
    this.current = [this._point(event)];
    this.strokes.push(this.current);
    this._draw(this.canvas.getContext("2d"), this.current, 0);
  }

  _move(event) {
    if (event.pointerId !== this.pointerId || !this.current) return;
    event.preventDefault();
    const from = this.current.length - 1;
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
    for (const e of events.length ? events : [event]) this.current.push(this._point(e));
    this._draw(this.canvas.getContext("2d"), this.current, from);
  }

  _up(event) {
    if (event.pointerId !== this.pointerId) return;
    this.pointerId = null;
    if (!this.current) return;
    this.current = null;
    this.onChange(false);
  }

  /** Draw a stroke from its point `from` on: a dot for a single tap, else the line through its points. */
  _draw(ctx, stroke, from) {
    if (stroke.length === 1) {
      ctx.beginPath();
      ctx.arc(stroke[0].x, stroke[0].y, LINE_WIDTH / 2, 0, 2 * Math.PI);
      ctx.fill();
      return;
    }
    ctx.beginPath();
    ctx.moveTo(stroke[from].x, stroke[from].y);
    for (let i = from + 1; i < stroke.length; i++) ctx.lineTo(stroke[i].x, stroke[i].y);
    ctx.stroke();
  }
}
