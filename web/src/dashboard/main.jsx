import "uplot/dist/uPlot.min.css";
import "./style.css";
import { render } from "preact";
import { useEffect, useMemo, useState } from "preact/hooks";
import { keyFromHash, liveSummary, statsQuery } from "./api.js";
import { Sparkline, TimeChart } from "./charts.jsx";
import { PERIODS, dateRange, periodFromSearch, periodToSearch, timeDimension } from "./periods.js";
import { useResource } from "./poll.js";

const LIVE_POLL_MS = 5000;
// Stats queries count against the key's hourly limit: refetch on focus at most once a minute.
const STATS_FOCUS_THROTTLE_MS = 60000;

const TOP_METRICS = [
  ["visitors", "Unique visitors", fmtNumber],
  ["visits", "Total visits", fmtNumber],
  ["pageviews", "Total pageviews", fmtNumber],
  ["views_per_visit", "Views per visit", (v) => String(v)],
  ["bounce_rate", "Bounce rate", (v) => `${v}%`],
  ["visit_duration", "Visit duration", fmtDuration],
];

// Panel tabs: [dimension, title, tab label, column heading].
const PANELS = [
  {
    id: "pages",
    tabs: [
      ["event:page", "Top pages", "Pages", "Page"],
      ["visit:entry_page", "Entry pages", "Entry", "Entry page"],
      ["visit:exit_page", "Exit pages", "Exit", "Exit page"],
    ],
  },
  { id: "sources", tabs: [["visit:source", "Top sources", "Sources", "Source"]] },
  { id: "locations", tabs: [["visit:country", "Countries", "Countries", "Country"]] },
  {
    id: "devices",
    tabs: [
      ["visit:device", "Devices", "Devices", "Device"],
      ["visit:browser", "Browsers", "Browsers", "Browser"],
      ["visit:os", "Operating systems", "OS", "Operating system"],
    ],
  },
];

function fmtNumber(n) {
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e4) return `${(n / 1e3).toFixed(1)}k`;
  return String(n);
}

function fmtDuration(seconds) {
  const m = Math.floor(seconds / 60);
  const s = seconds % 60;
  return m ? `${m}m ${s}s` : `${s}s`;
}

const regionNames = typeof Intl.DisplayNames === "function" ? new Intl.DisplayNames(["en"], { type: "region" }) : null;
function countryName(code) {
  if (!/^[A-Z]{2}$/.test(code)) return code;
  try {
    return (regionNames && regionNames.of(code)) || code;
  } catch {
    return code;
  }
}

function ErrorNote({ error }) {
  if (!error) return null;
  const hint = error.status === 401 ? " (check the key in the link)" : error.status === 429 ? " (this key's hourly limit)" : "";
  return <p class="error" data-testid="error">{`${error.message}${hint}`}</p>;
}

function Live({ site, apiKey }) {
  const live = useResource(`live|${site}|${apiKey}`, () => liveSummary(apiKey, site), { interval: LIVE_POLL_MS });
  const data = live.data;
  return (
    <section class="card live">
      <div class="now">
        <span class={`dot ${live.error ? "stale" : ""}`} />
        <strong data-testid="live-visitors" data-value={data ? data.visitors : ""}>{data ? fmtNumber(data.visitors) : "–"}</strong>
        <span class="muted">current visitors</span>
      </div>
      {data && <Sparkline points={data.pageviews_per_minute} />}
      <span class="muted small">pageviews per minute, last 30 minutes</span>
      <ErrorNote error={live.error} />
    </section>
  );
}

function PeriodPicker({ period, onChange }) {
  const [from, setFrom] = useState(period.from || "");
  const [to, setTo] = useState(period.to || "");
  const [custom, setCustom] = useState(period.name === "custom");
  return (
    <div class="picker">
      <select
        data-testid="period"
        value={custom ? "custom" : period.name}
        onChange={(e) => {
          const name = e.currentTarget.value;
          setCustom(name === "custom");
          if (name !== "custom") onChange({ name });
        }}
      >
        {PERIODS.map(([value, label]) => (
          <option value={value}>{label}</option>
        ))}
      </select>
      {custom && (
        <form
          class="custom"
          onSubmit={(e) => {
            e.preventDefault();
            if (from && to && from <= to) onChange({ name: "custom", from, to });
          }}
        >
          <input type="date" data-testid="from" value={from} onInput={(e) => setFrom(e.currentTarget.value)} required />
          <span>to</span>
          <input type="date" data-testid="to" value={to} onInput={(e) => setTo(e.currentTarget.value)} required />
          <button type="submit" data-testid="apply">Apply</button>
        </form>
      )}
    </div>
  );
}

function TopStats({ site, apiKey, period }) {
  const body = { site_id: site, metrics: TOP_METRICS.map(([m]) => m), date_range: dateRange(period) };
  const res = useResource(`top|${JSON.stringify(body)}|${apiKey}`, () => statsQuery(apiKey, body), { focusThrottle: STATS_FOCUS_THROTTLE_MS });
  const values = res.data ? res.data.results[0].metrics : null;
  return (
    <section class="card">
      <div class="top-stats" data-testid="top-stats" data-loaded={res.loading ? "0" : "1"}>
        {TOP_METRICS.map(([metric, label, fmt], i) => (
          <div class="stat" data-testid={`stat-${metric}`} data-value={values ? values[i] : ""}>
            <div class="muted small">{label}</div>
            <div class="big">{values ? fmt(values[i]) : "–"}</div>
          </div>
        ))}
      </div>
      <ErrorNote error={res.error} />
      <OverTime site={site} apiKey={apiKey} period={period} />
    </section>
  );
}

function OverTime({ site, apiKey, period }) {
  const dimension = timeDimension(period);
  const body = {
    site_id: site,
    metrics: ["visitors", "pageviews"],
    date_range: dateRange(period),
    dimensions: [dimension],
    include: { time_labels: true },
  };
  const res = useResource(`time|${JSON.stringify(body)}|${apiKey}`, () => statsQuery(apiKey, body), { focusThrottle: STATS_FOCUS_THROTTLE_MS });
  const series = useMemo(() => {
    if (!res.data) return null;
    // The API answers only buckets that have data; the time labels give the empty ones.
    const byLabel = new Map(res.data.results.map((r) => [r.dimensions[0], r.metrics]));
    const labels = res.data.meta.time_labels || [...byLabel.keys()];
    return {
      labels,
      visitors: labels.map((l) => (byLabel.get(l) || [0, 0])[0]),
      pageviews: labels.map((l) => (byLabel.get(l) || [0, 0])[1]),
    };
  }, [res.data]);
  return (
    <div data-testid="timeseries" data-dimension={dimension} data-loaded={res.loading ? "0" : "1"} data-series={series ? JSON.stringify(series) : ""}>
      {series && <TimeChart {...series} />}
      <ErrorNote error={res.error} />
    </div>
  );
}

function Breakdown({ site, apiKey, period, panel }) {
  const [tab, setTab] = useState(0);
  const [dimension, title, , column] = panel.tabs[tab];
  const body = {
    site_id: site,
    metrics: ["visitors"],
    date_range: dateRange(period),
    dimensions: [dimension],
    order_by: [["visitors", "desc"]],
    pagination: { limit: 10 },
  };
  const res = useResource(`bd|${JSON.stringify(body)}|${apiKey}`, () => statsQuery(apiKey, body), { focusThrottle: STATS_FOCUS_THROTTLE_MS });
  const rows = res.data ? res.data.results : [];
  const max = Math.max(1, ...rows.map((r) => r.metrics[0]));
  return (
    <section class="card breakdown" data-testid={`panel-${panel.id}`}>
      <header>
        <h3>{title}</h3>
        <nav>
          {panel.tabs.length > 1 &&
            panel.tabs.map(([dim, , label], i) => (
              <button class={i === tab ? "tab active" : "tab"} data-testid={`tab-${dim}`} onClick={() => setTab(i)}>
                {label}
              </button>
            ))}
        </nav>
      </header>
      <div class="row head muted small">
        <span>{column}</span>
        <span>Visitors</span>
      </div>
      <ol data-testid={`rows-${dimension}`} data-loaded={res.loading ? "0" : "1"}>
        {rows.map((r) => (
          <li class="row" data-label={r.dimensions[0]} data-value={r.metrics[0]}>
            <span class="bar" style={{ width: `${(100 * r.metrics[0]) / max}%` }} />
            <span class="label">{dimension === "visit:country" ? countryName(r.dimensions[0]) : r.dimensions[0]}</span>
            <span class="value">{fmtNumber(r.metrics[0])}</span>
          </li>
        ))}
        {res.data && !rows.length && <li class="muted">No data yet</li>}
      </ol>
      <ErrorNote error={res.error} />
    </section>
  );
}

function KeyForm({ site }) {
  const [domain, setDomain] = useState(site);
  const [key, setKey] = useState("");
  return (
    <form
      class="card keyform"
      onSubmit={(e) => {
        e.preventDefault();
        const target = `/dashboard/${encodeURIComponent(domain.trim())}${location.search}#key=${encodeURIComponent(key.trim())}`;
        location.assign(target);
      }}
    >
      <h2>Open a dashboard</h2>
      <p class="muted">Paste a Stats API key that may read the site. It stays in the page's address (after #), never in a cookie.</p>
      <input placeholder="example.com" value={domain} onInput={(e) => setDomain(e.currentTarget.value)} required />
      <input placeholder="site key" value={key} onInput={(e) => setKey(e.currentTarget.value)} required />
      <button type="submit">Open</button>
    </form>
  );
}

function App({ site }) {
  const [apiKey, setApiKey] = useState(keyFromHash());
  const [period, setPeriod] = useState(periodFromSearch(location.search));
  useEffect(() => {
    const onHash = () => setApiKey(keyFromHash());
    window.addEventListener("hashchange", onHash);
    return () => window.removeEventListener("hashchange", onHash);
  }, []);
  const choose = (next) => {
    setPeriod(next);
    history.replaceState(null, "", periodToSearch(next) + location.hash);
  };
  if (!site || !apiKey) return <KeyForm site={site} />;
  return (
    <main>
      <header class="top">
        <h1>{site}</h1>
        <PeriodPicker period={period} onChange={choose} />
      </header>
      <Live site={site} apiKey={apiKey} />
      <TopStats site={site} apiKey={apiKey} period={period} />
      <div class="grid">
        {PANELS.map((panel) => (
          <Breakdown site={site} apiKey={apiKey} period={period} panel={panel} />
        ))}
      </div>
      <footer class="muted small">
        Numbers from the Stats API v2 and the realtime endpoint. Anyone with this page's link (it carries the key) can read this site's stats.
      </footer>
    </main>
  );
}

const root = document.getElementById("app");
render(<App site={root.dataset.site || ""} />, root);
