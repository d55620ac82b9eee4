// Bundles the tracker (/js/script.js) and the dashboard (/dashboard/*) into dist/.
import { rmSync } from "node:fs";
import { build } from "esbuild";

// A clean folder: nothing stale is ever served.
rmSync("dist", { recursive: true, force: true });

const common = { bundle: true, minify: true, legalComments: "none", logLevel: "warning" };

await build({
  ...common,
  entryPoints: ["src/tracker.js"],
  outfile: "dist/script.js",
  format: "iife",
  // The tracker runs on customers' pages: old browsers must parse it (sendBeacon/fetch era).
  target: ["es2017"],
});

await build({
  ...common,
  entryPoints: { dashboard: "src/dashboard/main.jsx" },
  outdir: "dist",
  format: "iife",
  target: ["es2020"],
  jsx: "automatic",
  jsxImportSource: "preact",
});
