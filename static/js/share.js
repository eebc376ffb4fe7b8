/**
 * Share controls (docs/protocol.md, "Share links") on the track page and on each active
 * row of /dispatch, shown only to
 * people who may share (the parcel's owner, dispatchers): "Create share link" posts to
 * the share API and shows the link in a read-only box with "Copy" (the Clipboard API,
 * else the text is selected for the person to copy); "Revoke links" deletes every link of
 * the parcel. Unsafe calls carry the page's XSRF token with the login cookie.
 */

import { apiCall } from "./api.js";

function sentence(text) {
  return text.charAt(0).toUpperCase() + text.slice(1) + (/[.!?]$/.test(text) ? "" : ".");
}

/** Wire the controls in `box` (templates/_share_controls.html, the track page's, or
 * templates/_share_row.html, one per row of /dispatch) to the share API at `api`. */
export function shareControls(box, api) {
  if (!box || !api) return;
  const $ = (selector) => box.querySelector(selector);
  const create = $("[data-share=create]");
  const revoke = $("[data-share=revoke]");
  const result = $("[data-share=result]");
  const input = $("[data-share=url]");
  const copy = $("[data-share=copy]");
  const message = $("[data-share=message]");
  const say = (text, kind = "") => {
    message.textContent = text;
    message.dataset.kind = kind;
  };

  create.addEventListener("click", async () => {
    create.disabled = true;
    try {
      const link = await apiCall("POST", api, {});
      input.value = link.url;
      result.hidden = false;
      const until = new Date(link.expires_at).toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
      say(`Anyone with this link can watch this parcel until ${until}.`);
      input.focus();
      input.select();
    } catch (error) {
      say(sentence(error.message), "error");
    } finally {
      create.disabled = false;
    }
  });

  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(input.value);
      say("Link copied.");
    } catch {
      input.focus();
      input.select(); // no clipboard access (an http page, a refusal): the person copies it
      say("Press Ctrl+C (or ⌘C, or long-press) to copy the selected link.");
    }
  });

  revoke.addEventListener("click", async () => {
    revoke.disabled = true;
    try {
      await apiCall("DELETE", api);
      input.value = "";
      result.hidden = true;
      say("Every share link of this parcel has stopped working.");
    } catch (error) {
      say(sentence(error.message), "error");
    } finally {
      revoke.disabled = false;
    }
  });
}

/** Every `[data-share-api]` box of the page (the /dispatch rows). */
export function allShareControls(root = document) {
  for (const box of root.querySelectorAll("[data-share-api]")) shareControls(box, box.dataset.shareApi);
}
