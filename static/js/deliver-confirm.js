/**
 * "Delivered" asks first, on both driver pages (templates/_deliver_dialog.html): a modal
 * <dialog>, so focus moves into it and stays there, Escape cancels and focus goes back to
 * the button; Cancel is focused first and both buttons are large. When the page's latest
 * good fix (driver-shift.js) is further than the server's `deliver_far_m` from the parcel's
 * destination, the dialog says how far, in the server's words (`texts.deliver_far`).
 * Cancelling sends nothing.
 *
 * The dialog takes the proof of delivery (docs/protocol.md, "Proof of delivery"), each part
 * optional: a photo from the camera (made at most `proof.photo_max_side` px here, so a weak
 * signal carries less; the server stores it again without its metadata), a signature drawn on
 * the pad and the receiver's name. "Yes, delivered" with a proof keeps it on the phone and
 * sends it (proof-outbox.js); once the server has it the page marks the parcel delivered as
 * before. Without a signal the dialog closes and the proof waits with the delivery, which the
 * outbox sends, proof first, once the phone is back online; the page says so meanwhile. A proof
 * the server refuses (not an image, too large, a parcel no longer on its way) is said in the
 * dialog, which stays open.
 */

import { metres } from "./path.js";
import { ProofOutbox } from "./proof-outbox.js";
import { SignaturePad } from "./signature-pad.js";
import { dataJSON, toast } from "./ui.js";

const $ = (id) => document.getElementById(id);
const MiB = 1024 * 1024;
const PREVIEW_HEIGHT = 96; // CSS px of the photo's thumbnail in the dialog

/** "80 m", "450 m", "2.4 km", "10 km": a distance as a driver reads it. */
export function distanceText(m) {
  if (m < 995) return `${Math.max(10, Math.round(m / 10) * 10)} m`;
  const km = m / 1000;
  return `${km < 9.95 ? km.toFixed(1).replace(/\.0$/, "") : Math.round(km)} km`;
}

/** The destination an element names in its data-to-lat, data-to-lng and data-to-place (the server's). */
export function destinationOf(element) {
  const { toLat, toLng, toPlace } = element.dataset;
  return { lat: Number(toLat), lng: Number(toLng), place: toPlace || "" };
}

// -- the proof's parts ------------------------------------------------------------------------

const limits = dataJSON(document.querySelector("[data-rules]"), "rules").proof;
const fields = $("proof-fields");
const pad = new SignaturePad($("signature-pad"), {
  onChange: (empty) => { $("signature-clear").disabled = empty; },
});
let photo = null; // the photo to send (a Blob), once ready
let preparing = null; // the photo being made smaller
const sentFor = new Set(); // parcels whose proof this page sent: the server keeps it

/** Say what is wrong with the proof (a server's refusal reads as a sentence); nothing: say nothing. */
function problem(text) {
  const sentence = text ? text[0].toUpperCase() + text.slice(1) + (/[.!?]$/.test(text) ? "" : ".") : "";
  $("proof-problem").textContent = sentence;
  $("proof-problem").hidden = !text;
}

/**
 * The photo at most `maxSide` px, upright, as a JPEG (and its bitmap for the thumbnail); the
 * file itself when this browser cannot decode it (the server then says whether it is an image).
 */
async function smaller(file, maxSide) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch {
    return { blob: file, bitmap: null };
  }
  const scale = Math.min(1, maxSide / Math.max(bitmap.width, bitmap.height));
  if (scale === 1 && file.type === "image/jpeg") return { blob: file, bitmap };
  const canvas = document.createElement("canvas");
  canvas.width = Math.round(bitmap.width * scale);
  canvas.height = Math.round(bitmap.height * scale);
  canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.9));
  return { blob: blob || file, bitmap };
}

function showThumbnail(bitmap) {
  const preview = $("proof-photo-preview");
  preview.hidden = !bitmap;
  if (!bitmap) return;
  const ratio = Math.min(2, window.devicePixelRatio || 1);
  const height = PREVIEW_HEIGHT;
  const width = Math.round((bitmap.width / bitmap.height) * height);
  preview.width = width * ratio;
  preview.height = height * ratio;
  preview.style.width = `${width}px`;
  preview.style.height = `${height}px`;
  preview.getContext("2d").drawImage(bitmap, 0, 0, preview.width, preview.height);
}

function clearPhoto() {
  photo = null;
  preparing = null;
  $("proof-photo-input").value = "";
  showThumbnail(null);
  $("proof-photo-clear").hidden = true;
  $("proof-photo-action").textContent = "Take a photo";
  $("proof-photo-state").textContent = "";
  $("proof-photo-state").classList.add("visually-hidden");
}

async function photoChosen() {
  const file = $("proof-photo-input").files[0];
  problem("");
  if (!file) return clearPhoto();
  const work = smaller(file, limits.photo_max_side);
  preparing = work;
  const { blob, bitmap } = await work;
  if (preparing !== work) return; // another photo was taken meanwhile, or it was removed
  preparing = null;
  if (blob.size > limits.photo_max_bytes) {
    clearPhoto();
    return problem(fields.dataset.tooLarge.replace("{mib}", String(limits.photo_max_bytes / MiB)));
  }
  photo = blob;
  showThumbnail(bitmap);
  $("proof-photo-clear").hidden = false;
  $("proof-photo-action").textContent = "Take it again";
  // Without a thumbnail (a format this browser does not show) the file's name says which it is.
  $("proof-photo-state").textContent = bitmap ? "Photo taken." : file.name;
  $("proof-photo-state").classList.toggle("visually-hidden", Boolean(bitmap));
}

$("proof-photo-input").addEventListener("change", photoChosen);
$("proof-photo-clear").addEventListener("click", () => { clearPhoto(); $("proof-photo-input").focus(); });
$("signature-clear").addEventListener("click", () => pad.clear());
$("proof-name").maxLength = limits.received_by_max;

function resetProof() {
  clearPhoto();
  pad.clear();
  $("proof-name").value = "";
  problem("");
}

/** The proof as filled in ({photo, signature, receivedBy}), or null when nothing was. */
async function proofGiven() {
  if (preparing) await preparing;
  const signature = await pad.toBlob();
  const receivedBy = $("proof-name").value.trim().replace(/\s+/g, " ");
  if (!photo && !signature && !receivedBy) return null;
  return { photo, signature, receivedBy };
}

// -- deliveries waiting for a signal ----------------------------------------------------------

const banner = $("proof-outbox");
const say = (text, values) => Object.entries(values).reduce((t, [k, v]) => t.replaceAll(`{${k}}`, v), text);

function showWaiting(entries) {
  const ids = [...new Set(entries.map((e) => e.parcelId))];
  banner.hidden = ids.length === 0;
  banner.textContent = ids.length
    ? say(ids.length === 1 ? banner.dataset.one : banner.dataset.many, { parcels: ids.join(", #") }) : "";
}

const driverId = document.querySelector("[data-driver-id]").dataset.driverId;
const outbox = new ProofOutbox(`proof:${driverId}`, {
  onWaiting: showWaiting,
  onDelivered(parcelId, status) {
    toast(say(banner.dataset.delivered, { parcel: parcelId }), "success", 8000);
    // For the page to show it, if no socket tells it (the shift is off): see driver.js, shift.js.
    window.dispatchEvent(new CustomEvent("parcel-status", { detail: { parcelId, status } }));
  },
  onRefused(parcelId, message, proofSent) {
    const text = proofSent ? banner.dataset.refusedStatus : banner.dataset.refused;
    toast(say(text, { parcel: parcelId, message }), "error", 12000);
  },
});
outbox.flush();

// -- the dialog -------------------------------------------------------------------------------

/**
 * Ask whether parcel `parcelId` is delivered, with its proof. `to`: its destination {lat, lng,
 * place}; `from`: the latest good fix {lat, lng}, or null. → true once the driver says yes and
 * the proof, if any, is on the server: the caller then marks the parcel delivered. False when
 * cancelled, or when the proof waits for a signal (it is then delivered with it, later).
 */
export function confirmDelivery({ parcelId, to, from, rules }) {
  const dialog = $("deliver-dialog");
  if (dialog.open) return Promise.resolve(false);
  const far = from && Number.isFinite(to.lat) && Number.isFinite(to.lng) ? metres(from, to) : 0;
  const warn = far > rules.deliver_far_m;
  $("deliver-parcel").textContent = String(parcelId);
  $("deliver-far").hidden = !warn;
  $("deliver-far").textContent = warn
    ? rules.texts.deliver_far.replace("{distance}", distanceText(far)).replace("{place}", to.place) : "";
  if (dialog.dataset.parcelId !== String(parcelId)) resetProof(); // what was filled in stays for the same parcel
  dialog.dataset.parcelId = String(parcelId);
  $("proof-kept").hidden = !sentFor.has(parcelId);
  $("deliver-sending").hidden = true;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    let sending = false;
    const buttons = [$("deliver-ok"), $("deliver-cancel")];
    const ok = async () => {
      if (sending) return;
      const proof = await proofGiven();
      if (!proof) return dialog.close("deliver");
      sending = true;
      problem("");
      $("deliver-sending").hidden = false;
      for (const b of buttons) b.disabled = true;
      const sent = await outbox.deliver({ parcelId, ...proof });
      sending = false;
      $("deliver-sending").hidden = true;
      for (const b of buttons) b.disabled = false;
      if (sent.state === "refused") return problem(sent.message);
      resetProof();
      if (sent.state === "sent") sentFor.add(parcelId);
      dialog.close(sent.state === "sent" ? "deliver" : "waiting");
    };
    const cancel = () => dialog.close("cancel");
    const escape = (event) => { if (sending) event.preventDefault(); }; // not while the proof is on its way
    $("deliver-ok").addEventListener("click", ok);
    $("deliver-cancel").addEventListener("click", cancel);
    dialog.addEventListener("cancel", escape);
    dialog.addEventListener("close", () => { // the buttons, or Escape
      $("deliver-ok").removeEventListener("click", ok);
      $("deliver-cancel").removeEventListener("click", cancel);
      dialog.removeEventListener("cancel", escape);
      resolve(dialog.returnValue === "deliver");
    }, { once: true });
    dialog.showModal();
    pad.resize(); // its size is known only now that it is shown
  });
}
