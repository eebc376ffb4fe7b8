/**
 * The integrations page (templates/integrations.html): a Copy button beside a key or secret
 * shown once, times in the reader's zone, and "Revoke" / "Delete" asking first in a modal
 * <dialog> whose words are the server's (data-texts). Without this script the key is
 * selected by hand, times read in UTC, and the forms go as they are: the server answers
 * with a page that asks.
 */

import { answer, confirmForms } from "./dialog.js";
import { localTimes } from "./ui.js";

localTimes();

for (const button of document.querySelectorAll("button[data-copy]")) {
  const field = document.getElementById(button.dataset.copy);
  const label = button.textContent;
  button.hidden = false;
  button.addEventListener("click", async () => {
    field.focus();
    field.select(); // selected either way: a keyboard copy works too
    let copied = false;
    try {
      copied = document.execCommand("copy"); // within the click, where a browser allows it
    } catch { /* not allowed here: the clipboard API next */ }
    if (!copied && navigator.clipboard) {
      copied = await navigator.clipboard.writeText(field.value).then(() => true, () => false);
    }
    button.textContent = copied ? button.dataset.copied : button.dataset.notCopied;
    setTimeout(() => { button.textContent = label; }, 4000);
  });
}

const dialog = document.getElementById("confirm-dialog");
const texts = JSON.parse(dialog.dataset.texts);

/** Ask about what a form revokes or deletes; → true once the dispatcher says yes. */
function ask(form) {
  const words = texts[form.dataset.confirm];
  document.getElementById("dialog-title").textContent = words.title.replace("{name}", form.dataset.name);
  document.getElementById("dialog-text").textContent = words.text;
  const ok = document.getElementById("dialog-ok");
  const cancel = document.getElementById("dialog-cancel");
  ok.textContent = words.button;
  return answer(dialog, ok, cancel);
}

confirmForms(dialog, ask);
