import { useEffect, useState } from "preact/hooks";

// Stale-while-revalidate, the part of SWR this page needs: the last data stays on screen while
// a new answer is fetched; a resource refetches when the window regains focus (throttled) and,
// with `interval`, polls while the page is visible; after an error it retries with exponential
// back-off (or the server's Retry-After), so a struggling server is not hammered.
// `loading` is true until data for this very `cacheKey` arrived (older data may still show).
export function useResource(cacheKey, fetcher, options = {}) {
  const { interval = 0, focusThrottle = 5000, maxBackoff = 60000 } = options;
  const [state, setState] = useState({ key: null, data: undefined, error: undefined, loading: true });

  useEffect(() => {
    let alive = true;
    let timer = null;
    let inflight = false;
    let failures = 0;
    let lastStart = 0;

    const schedule = (ms) => {
      clearTimeout(timer);
      if (ms > 0) timer = setTimeout(run, ms);
    };

    async function run() {
      if (!alive || inflight) return;
      // A hidden page does not poll; focus or visibility brings it back (below).
      if (interval && document.visibilityState === "hidden") return;
      inflight = true;
      lastStart = Date.now();
      setState((s) => ({ ...s, loading: true }));
      try {
        const data = await fetcher();
        if (!alive) return;
        failures = 0;
        setState({ key: cacheKey, data, error: undefined, loading: false });
        schedule(interval);
      } catch (error) {
        if (!alive) return;
        failures += 1;
        setState((s) => ({ ...s, error, loading: false }));
        // A 4xx other than 429 will not heal by itself: polls keep trying slowly, others stop.
        const transient = !error.status || error.status >= 500 || error.status === 429;
        if (interval || transient) {
          const backoff = Math.min(maxBackoff, (interval || 2500) * 2 ** failures);
          schedule(Math.max(backoff, (error.retryAfter || 0) * 1000));
        }
      } finally {
        inflight = false;
      }
    }

    const revalidate = () => {
      if (document.visibilityState !== "visible") return;
      if (Date.now() - lastStart < focusThrottle) return;
      clearTimeout(timer);
      run();
    };
    window.addEventListener("focus", revalidate);
    document.addEventListener("visibilitychange", revalidate);
    run();
    return () => {
      alive = false;
      clearTimeout(timer);
      window.removeEventListener("focus", revalidate);
      document.removeEventListener("visibilitychange", revalidate);
    };
  }, [cacheKey]);

  return { ...state, loading: state.loading || state.key !== cacheKey };
}
