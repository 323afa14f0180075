// Offline copy of the site, cached under its content hash (written here at build time: a rebuilt site is a new
// service worker that replaces the old copy). On install: the page, its scripts, config and model. The runtime's
// WebAssembly comes in several builds (threads, relaxed SIMD or not): the page tells this worker which files it
// loaded ("cache" message) and only those are kept. Requests are answered from the cache, the network as fallback.
const SITE = "{{SITE_SHA256}}";
const CACHE = `edgecxr-web-${SITE}`;
self.addEventListener("install", (event) => {
  event.waitUntil((async () => {
    const list = await (await fetch(`files.json?v=${SITE}`, { cache: "no-store" })).json();
    const cache = await caches.open(CACHE);
    await cache.addAll(["./", ...list.files.filter((f) => !f.path.startsWith("vendor/")).map((f) => f.path)]);
    await self.skipWaiting();
  })());
});
self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) if (name.startsWith("edgecxr-web-") && name !== CACHE) await caches.delete(name);
    await self.clients.claim();
  })());
});
self.addEventListener("message", (event) => {
  if (event.data?.type !== "cache") return;
  event.waitUntil((async () => {
    const cache = await caches.open(CACHE);
    const mine = event.data.urls.filter((u) => u.startsWith(self.registration.scope)); // this site's files only
    let added = 0, failed = 0;
    for (const url of mine) {
      const key = new URL(url); key.search = "";
      try {
        if (!(await cache.match(key))) { await cache.add(key); added++; }
      } catch { failed++; }
    }
    event.source?.postMessage({ type: "cached", files: (await cache.keys()).length, added, failed });
  })());
});
self.addEventListener("fetch", (event) => {
  const req = event.request;
  if (req.method !== "GET" || new URL(req.url).origin !== self.location.origin) return;
  event.respondWith((async () => (await caches.match(req, { cacheName: CACHE, ignoreSearch: true })) || fetch(req))());
});
