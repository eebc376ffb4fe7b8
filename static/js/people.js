/**
 * The people page (templates/people.html): "Deactivate" asks first, in a modal <dialog>
 * whose words are the server's. Focus moves into it with Cancel first, Escape cancels,
 * and only "Yes, deactivate" sends the row's form, with `confirmed=yes`. Without this
 * script the form goes as it is and the server answers with a page that asks.
 */

import { answer, confirmForms } from "./dialog.js";

const $ = (id) => document.getElementById(id);
const dialog = $("deactivate-dialog");

/** Ask about the person a form deactivates; → true once the dispatcher says yes. */
function ask(form) {
  $("deactivate-person").textContent = form.dataset.name;
  $("deactivate-email").textContent = form.dataset.email;
  return answer(dialog, $("deactivate-ok"), $("deactivate-cancel"));
}

confirmForms(dialog, ask);
