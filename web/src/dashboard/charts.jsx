import uPlot from "uplot";
import { useEffect, useRef } from "preact/hooks";

// uPlot draws on a canvas of a fixed size: make one per data change, sized to the container,
// and remake it when the window is resized.
function useUPlot(makeOptions, data, deps) {
  const box = useRef(null);
  useEffect(() => {
    const el = box.current;
    if (!el || !data) return undefined;
    let chart = null;
    const draw = () => {
      if (chart) chart.destroy();
      chart = new uPlot(makeOptions(el.clientWidth), data, el);
    };
    draw();
    let pending = null;
    const onResize = () => {
      clearTimeout(pending);
      pending = setTimeout(draw, 150);
    };
    window.addEventListener("resize", onResize);
    return () => {
      clearTimeout(pending);
      window.removeEventListener("resize", onResize);
      if (chart) chart.destroy();
    };
  }, deps);
  return box;
}

const BLUE = "#4f46e5";
const TEAL = "#0d9488";

// Visitors and pageviews per time bucket; x is the bucket's index, labelled with the API's own
// time labels (already in the site's timezone), so no time zone arithmetic happens here.
export function TimeChart({ labels, visitors, pageviews }) {
  const short = (label) => (label.length > 10 ? label.slice(11, 16) : label);
  const box = useUPlot(
    (width) => ({
      width,
      height: 260,
      padding: [12, 40, 0, 0], // room for the last time label
      scales: { x: { time: false } },
      legend: { live: true },
      cursor: { drag: { x: false, y: false } },
      axes: [
        {
          values: (u, splits) => splits.map((i) => (labels[i] === undefined ? "" : short(labels[i]))),
          space: 60,
        },
        { values: (u, splits) => splits.map((v) => (Number.isInteger(v) ? v : "")), size: 50 },
      ],
      series: [
        { label: "time", value: (u, i) => (i == null ? "" : labels[i] || "") },
        { label: "Visitors", stroke: BLUE, width: 2, fill: "rgba(79,70,229,0.08)" },
        { label: "Pageviews", stroke: TEAL, width: 2 },
      ],
    }),
    [labels.map((_, i) => i), visitors, pageviews],
    [labels.join(), visitors.join(), pageviews.join()],
  );
  return <div class="chart" ref={box} />;
}

// Pageviews per minute of the last half hour, from the realtime endpoint.
export function Sparkline({ points }) {
  const box = useUPlot(
    (width) => ({
      width: Math.max(width, 120),
      height: 48,
      scales: { x: { time: false } },
      legend: { show: false },
      cursor: { show: false },
      axes: [{ show: false }, { show: false }],
      series: [{}, { stroke: BLUE, width: 2, fill: "rgba(79,70,229,0.12)", points: { show: false } }],
    }),
    [points.map((_, i) => i), points.map((p) => p[1])],
    [points.map((p) => p[1]).join()],
  );
  return <div class="sparkline" ref={box} />;
}
