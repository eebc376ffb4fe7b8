/**
 * "Could not deliver" asks why, on both driver pages (templates/_fail_dialog.html): a modal
 * <dialog> with the server's reasons (`rules.failure_reasons`, docs/protocol.md, "A delivery
 * that fails") as large radio buttons and an optional note of at most `rules.max_failure_note`
 * characters. Cancel (or Escape) sends nothing.
 */

const $ = (id) => document.getElementById(id);

/** Ask why parcel `parcelId` could not be delivered → {reason, note}, or null when cancelled. */
export function askFailure({ parcelId, rules }) {
  const dialog = $("fail-dialog");
  if (dialog.open) return Promise.resolve(null);
  const form = $("fail-form");
  form.reset();
  $("fail-parcel").textContent = String(parcelId);
  $("fail-problem").hidden = true;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    const submit = (event) => {
      event.preventDefault();
      const reason = form.elements.reason.value;
      if (!reason) {
        $("fail-problem").hidden = false;
        form.querySelector("input[name=reason]").focus();
        return;
      }
      dialog.close("fail");
    };
    const cancel = () => dialog.close("cancel");
    form.addEventListener("submit", submit);
    $("fail-cancel").addEventListener("click", cancel);
    dialog.addEventListener("close", () => {
      form.removeEventListener("submit", submit);
      $("fail-cancel").removeEventListener("click", cancel);
      resolve(dialog.returnValue === "fail"
        ? { reason: form.elements.reason.value, note: form.elements.note.value.trim() } : null);
    }, { once: true });
    dialog.showModal();
  });
}
