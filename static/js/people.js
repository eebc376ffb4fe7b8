/**
 * The people page (templates/people.html): "Deactivate" asks first, in a modal <dialog>
 * whose words are the server's. Focus moves into it with Cancel first, Escape cancels,
 * and only "Yes, deactivate" sends the row's form, with `confirmed=yes`. Without this
 * script the form goes as it is and the server answers with a page that asks.
 */

const dialog = document.getElementById("deactivate-dialog");

/** Ask about the person a form deactivates; → true once the dispatcher says yes. */
function ask(form) {
  document.getElementById("deactivate-person").textContent = form.dataset.name;
  document.getElementById("deactivate-email").textContent = form.dataset.email;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    const ok = () => dialog.close("deactivate");
    const cancel = () => dialog.close("cancel");
    document.getElementById("deactivate-ok").addEventListener("click", ok);
    document.getElementById("deactivate-cancel").addEventListener("click", cancel);
    dialog.addEventListener("close", () => { // the buttons, or Escape
      document.getElementById("deactivate-ok").removeEventListener("click", ok);
      document.getElementById("deactivate-cancel").removeEventListener("click", cancel);
      resolve(dialog.returnValue === "deactivate");
    }, { once: true });
    dialog.showModal();
  });
}

for (const form of document.querySelectorAll("form[data-confirm]")) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (dialog.open || !(await ask(form))) return;
    form.elements.confirmed.value = "yes";
    form.submit(); // no second submit event: it goes as it is
  });
}
