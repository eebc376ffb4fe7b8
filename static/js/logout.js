/**
 * Logging out ends every socket of the person (the server closes them with 4401), and a
 * page's socket would then ask for a new token, get 401 and send the page to
 * /login?next=…, racing the logout's own redirect to /login. So a live page hears of the
 * logout form being sent and closes its sockets first.
 */

/** Call `fn` when this page's "Log out" form is submitted. */
export function onLogout(fn) {
  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (form instanceof HTMLFormElement && new URL(form.action, location.href).pathname === "/logout") fn();
  });
}
