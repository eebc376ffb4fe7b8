/**
 * The recipient pages' service worker: it exists only so a page can show a notification
 * where the page's own `Notification` constructor throws (Chrome for Android), through
 * `registration.showNotification` (static/js/notify.js). Registered from /static/js/, it
 * controls no page and caches nothing; there is no Push API here.
 *
 * A tap on the notification brings the page that raised it to the front (or opens it again).
 */

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const url = event.notification.data && event.notification.data.url;
  event.waitUntil((async () => {
    const open = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
    const page = open.find((client) => url && client.url === url) || open[0];
    if (page) return page.focus();
    if (url) return self.clients.openWindow(url);
    return undefined;
  })());
});
