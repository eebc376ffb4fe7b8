/**
 * The share links of /dispatch's rows: each active parcel's "Share link" button shows or
 * hides the controls in the row under it (templates/_share_row.html), wired by share.js.
 */

import { allShareControls } from "./share.js";

for (const toggle of document.querySelectorAll("[data-share-toggle]")) {
  const panel = document.getElementById(toggle.getAttribute("aria-controls"));
  toggle.addEventListener("click", () => {
    const open = toggle.getAttribute("aria-expanded") !== "true";
    toggle.setAttribute("aria-expanded", String(open));
    panel.hidden = !open;
    toggle.closest("tr").classList.toggle("is-sharing", open); // the two rows read as one
  });
}
allShareControls();
