/**
 * "Delivered" asks first, on both driver pages (templates/_deliver_dialog.html): a modal
 * <dialog>, so focus moves into it and stays there, Escape cancels and focus goes back to
 * the button; Cancel is focused first and both buttons are large. When the page's latest
 * good fix (driver-shift.js) is further than the server's `deliver_far_m` from the parcel's
 * destination, the dialog says how far, in the server's words (`texts.deliver_far`).
 * Cancelling sends nothing.
 */

import { metres } from "./path.js";

const $ = (id) => document.getElementById(id);

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

/**
 * Ask whether parcel `parcelId` is delivered. `to`: its destination {lat, lng, place};
 * `from`: the latest good fix {lat, lng}, or null. → true once the driver says yes.
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
  dialog.returnValue = "";
  return new Promise((resolve) => {
    const ok = () => dialog.close("deliver");
    const cancel = () => dialog.close("cancel");
    $("deliver-ok").addEventListener("click", ok);
    $("deliver-cancel").addEventListener("click", cancel);
    dialog.addEventListener("close", () => { // the buttons, or Escape
      $("deliver-ok").removeEventListener("click", ok);
      $("deliver-cancel").removeEventListener("click", cancel);
      resolve(dialog.returnValue === "deliver");
    }, { once: true });
    dialog.showModal();
  });
}
