/**
 * The proof of delivery on the track and share pages (templates/_proof.html, docs/protocol.md,
 * "Proof of delivery"): its time in the reader's own time zone, and, when the parcel is
 * delivered while the page is open, the proof itself, read from the server: the section's
 * data-source is the parcel's JSON on the track page and /t/<token>/proof on the share page,
 * both carrying `proof`. The page's status is read from #parcel-status, whose data-status
 * track.js sets from the socket's `status` messages.
 */

const $ = (id) => document.getElementById(id);
const box = $("proof");
const RETRIES = [0, 2000, 6000]; // ms before each try to read the proof after the delivery

/** "14:32" today, "8 Jan, 14:32" another day. */
function when(timestamp) {
  const date = new Date(timestamp);
  if (Number.isNaN(date.getTime())) return "";
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (date.toDateString() === new Date().toDateString()) return time;
  return `${date.toLocaleDateString([], { day: "numeric", month: "short" })}, ${time}`;
}

function showTime() {
  const time = $("proof-time");
  if (time.dateTime) time.textContent = when(time.dateTime);
}

/** Fill the section with a proof ({received_by, photo, signature, taken_at}) and show it. */
function showProof(proof) {
  $("proof-name").textContent = proof.received_by || "";
  $("proof-received").hidden = !proof.received_by;
  $("proof-unnamed").hidden = Boolean(proof.received_by);
  $("proof-time").dateTime = proof.taken_at || "";
  showTime();
  $("proof-photo-link").hidden = !proof.photo;
  if (proof.photo) {
    $("proof-photo-link").href = proof.photo;
    $("proof-photo").src = proof.photo;
  }
  $("proof-signature-box").hidden = !proof.signature;
  if (proof.signature) $("proof-signature").src = proof.signature;
  box.hidden = false;
}

async function loadProof() {
  for (const wait of RETRIES) {
    await new Promise((resolve) => setTimeout(resolve, wait));
    try {
      const response = await fetch(box.dataset.source, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (!response.ok) continue;
      const { proof } = await response.json();
      if (proof) showProof(proof);
      return; // delivered without a proof: nothing to show
    } catch {
      // no connection right now: try again
    }
  }
}

if (box) {
  showTime();
  const status = $("parcel-status");
  let loading = false;
  if (status) {
    new MutationObserver(() => {
      if (status.dataset.status === "delivered" && box.hidden && !loading) {
        loading = true;
        loadProof().finally(() => { loading = false; });
      }
    }).observe(status, { attributes: true, attributeFilter: ["data-status"] });
  }
}
