/**
 * The import page (/dispatch/import), made quicker where JavaScript runs; without it the
 * same forms work with their buttons, and the server checks every row either way.
 *
 * - Choosing a file checks it at once (the form is sent as if "Check the file" had been
 *   pressed); a file over the server's limit is refused here first, without sending it.
 * - A form on its way shows it (the button says so and cannot be pressed twice: a second
 *   "Import" would import the file twice).
 *
 * The limit and the texts come from the page's data attributes (the server's).
 */

const choose = document.getElementById("import-form");
const file = choose.elements.file;
const problem = document.getElementById("file-problem");

function busy(form) {
  form.addEventListener("submit", (event) => {
    if (form.dataset.sending) {
      event.preventDefault();
      return;
    }
    form.dataset.sending = "1";
    const button = form.querySelector('button[type="submit"]');
    button.disabled = true;
    button.textContent = form.dataset.busy;
  });
}

file.addEventListener("change", () => {
  const chosen = file.files[0];
  if (!chosen) return;
  if (chosen.size > Number(choose.dataset.maxBytes)) {
    problem.textContent = choose.dataset.tooLarge;
    problem.hidden = false;
    file.setAttribute("aria-invalid", "true");
    file.value = "";
    return;
  }
  problem.hidden = true;
  file.removeAttribute("aria-invalid");
  choose.requestSubmit();
});

busy(choose);
const confirm = document.getElementById("confirm-form");
if (confirm) busy(confirm);
// Back to this page from the browser's cache: the file can be chosen again. An import that
// was sent stays sent (its button stays off).
window.addEventListener("pageshow", (event) => {
  if (!event.persisted || !choose.dataset.sending) return;
  delete choose.dataset.sending;
  const button = choose.querySelector('button[type="submit"]');
  button.disabled = false;
  button.textContent = choose.dataset.idle;
});
// After a check, the rows are what the person came for.
document.getElementById("import-summary")?.scrollIntoView({ block: "start" });
