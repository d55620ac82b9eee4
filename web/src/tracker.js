// The tracker served at /js/script.js: a drop-in for Plausible's script plus web vitals.
//
//   <script defer data-domain="example.com" src="https://stats.example.com/js/script.js"></script>
//
// Attributes: data-domain (required; a comma-separated list sends to each site), data-api (the
// event endpoint; default: /api/event on the script's origin), data-respect-dnt (send nothing
// when the browser asks not to be tracked), data-include-localhost (Plausible ignores localhost,
// so do we unless this is set).
// No cookies and no storage: the visitor is recognised server-side by a daily-salted hash.
import { onCLS, onFCP, onINP, onLCP, onTTFB } from "web-vitals";

const script = document.currentScript;
const attr = (name) => script && script.getAttribute(name);
const domain = attr("data-domain");
const endpoint = attr("data-api") || new URL(script ? script.src : "/", location.href).origin + "/api/event";
const respectDnt = script && script.hasAttribute("data-respect-dnt");
const includeLocalhost = script && script.hasAttribute("data-include-localhost");

function ignoredReason() {
  if (!domain) return "no data-domain";
  if (
    !includeLocalhost &&
    (/^localhost$|^127(\.[0-9]+){0,2}\.[0-9]+$|^\[::1?\]$/.test(location.hostname) ||
      location.protocol === "file:")
  ) {
    return "localhost";
  }
  if (respectDnt && (navigator.doNotTrack === "1" || window.doNotTrack === "1")) {
    return "do not track";
  }
  return null;
}

function post(payload, callback, beacon) {
  const body = JSON.stringify(payload);
  // text/plain keeps the request "simple": no CORS preflight, as with Plausible's script.
  if (beacon && navigator.sendBeacon) {
    // A beacon survives the page being unloaded, which is when the final vitals are known.
    if (navigator.sendBeacon(endpoint, new Blob([body], { type: "text/plain" }))) return;
  }
  fetch(endpoint, {
    method: "POST",
    headers: { "Content-Type": "text/plain" },
    body,
    keepalive: true,
  }).then(
    (response) => callback && callback({ status: response.status }),
    (error) => callback && callback({ error }),
  );
}

function trigger(name, options) {
  const opts = options || {};
  const reason = ignoredReason();
  if (reason) {
    if (window.console) console.warn("Ignoring event: " + reason);
    if (opts.callback) opts.callback();
    return;
  }
  const payload = { n: name, u: location.href, d: domain, r: document.referrer || null };
  if (opts.props) payload.p = opts.props;
  if (opts.revenue) payload.$ = opts.revenue;
  if (opts.interactive === false) payload.i = false;
  post(payload, opts.callback, false);
}

// Pageviews: on load and on history navigation of single-page apps.
let lastPage = null;
function page(isNavigation) {
  if (isNavigation && lastPage === location.pathname) return;
  lastPage = location.pathname;
  trigger("pageview");
}

// Calls made before the script loaded, queued by Plausible's snippet.
const queue = (window.plausible && window.plausible.q) || [];
window.plausible = trigger;
for (const args of queue) trigger.apply(null, args);

if (history.pushState) {
  const pushState = history.pushState;
  history.pushState = function () {
    pushState.apply(this, arguments);
    page(true);
  };
  window.addEventListener("popstate", () => page(true));
}

if (document.visibilityState === "prerender") {
  document.addEventListener("visibilitychange", function once() {
    if (!lastPage && document.visibilityState === "visible") {
      document.removeEventListener("visibilitychange", once);
      page(false);
    }
  });
} else {
  page(false);
}

// Web vitals of this page load: LCP, FCP and TTFB belong to the document's first URL, INP and
// CLS accumulate over its whole life, so all are sent once, with that URL, when the page is
// hidden or left. They ride on an `engagement` event, which extends the visit but counts as no
// pageview or event, and is non-interactive so that it never ends a bounce.
const landing = location.href;
const vitals = {};
let vitalsSent = false;
const keep = (metric) => {
  vitals[metric.name.toLowerCase()] =
    metric.name === "CLS" ? Math.round(metric.value * 10000) / 10000 : Math.round(metric.value);
};
// reportAllChanges: `vitals` always holds the latest values, since `pagehide` comes before the
// last `visibilitychange`, on which web-vitals would otherwise report its final LCP.
const all = { reportAllChanges: true };
onTTFB(keep, all);
onFCP(keep, all);
onLCP(keep, all);
onINP(keep, all);
onCLS(keep, all);

function sendVitals(event) {
  if (vitalsSent || (event.type !== "pagehide" && document.visibilityState !== "hidden")) return;
  if (!Object.keys(vitals).length || ignoredReason()) return;
  vitalsSent = true;
  post({ n: "engagement", u: landing, d: domain, i: false, vitals }, null, true);
}
// web-vitals listens on window in the capture phase, so its updates on hiding run first.
document.addEventListener("visibilitychange", sendVitals, true);
window.addEventListener("pagehide", sendVitals, true);
