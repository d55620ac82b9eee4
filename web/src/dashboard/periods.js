// The date range picker's periods, as Stats API v2 `date_range` values.
export const PERIODS = [
  ["day", "Today"],
  ["7d", "Last 7 days"],
  ["30d", "Last 30 days"],
  ["month", "This month"],
  ["12mo", "Last 12 months"],
  ["custom", "Custom range"],
];

export function dateRange(period) {
  return period.name === "custom" ? [period.from, period.to] : period.name;
}

// The time dimension for the chart: hours for a day, months for a year, days otherwise.
export function timeDimension(period) {
  if (period.name === "day") return "time:hour";
  if (period.name === "12mo") return "time:month";
  if (period.name === "custom") {
    const days = (Date.parse(period.to) - Date.parse(period.from)) / 86400000 + 1;
    if (days <= 1) return "time:hour";
    if (days > 92) return "time:month";
  }
  return "time:day";
}

export function periodFromSearch(search) {
  const params = new URLSearchParams(search);
  const name = params.get("period") || "7d";
  const from = params.get("from") || "";
  const to = params.get("to") || "";
  const isDate = (s) => /^\d{4}-\d{2}-\d{2}$/.test(s);
  if (name === "custom" && isDate(from) && isDate(to) && from <= to) return { name, from, to };
  if (PERIODS.some(([p]) => p === name && p !== "custom")) return { name };
  return { name: "7d" };
}

export function periodToSearch(period) {
  const params = new URLSearchParams({ period: period.name });
  if (period.name === "custom") {
    params.set("from", period.from);
    params.set("to", period.to);
  }
  return `?${params}`;
}
