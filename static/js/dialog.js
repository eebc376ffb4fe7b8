/**
 * A modal <dialog> that asks before something happens, the one way every page asks: focus
 * moves into it, Escape cancels, focus goes back where it was; only its "yes" button says yes.
 */

/** Show `dialog` until `yes` or `no` is pressed (or Escape) → true for `yes`. */
export function answer(dialog, yes, no) {
  dialog.returnValue = "";
  return new Promise((resolve) => {
    const accept = () => dialog.close("yes");
    const refuse = () => dialog.close("no");
    yes.addEventListener("click", accept);
    no.addEventListener("click", refuse);
    dialog.addEventListener("close", () => { // the buttons, or Escape
      yes.removeEventListener("click", accept);
      no.removeEventListener("click", refuse);
      resolve(dialog.returnValue === "yes");
    }, { once: true });
    dialog.showModal();
  });
}

/**
 * Every `form[data-confirm]` asks first (`ask(form)` → true to go on), then is sent with its
 * `confirmed` field set to "yes". Without the script such a form goes as it is, and the
 * server answers with a page that asks.
 */
export function confirmForms(dialog, ask) {
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      if (dialog.open || !(await ask(form))) return;
      form.elements.confirmed.value = "yes";
      form.submit(); // no second submit event: it goes as it is
    });
  }
}
