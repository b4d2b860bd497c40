// Builds the page into one directory (default ../../services/webapp/dist,
// which services/webapp embeds): app.js (the bundle of src/app/main.ts),
// index.html and app.css. `node build.mjs <dir>` builds elsewhere (the
// up-to-date check builds into a temporary directory and compares).
import { build } from "esbuild";
import { copyFileSync, mkdirSync, readdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = resolve(process.argv[2] ?? join(here, "../../services/webapp/dist"));
mkdirSync(out, { recursive: true });
await build({
  entryPoints: [join(here, "src/app/main.ts")],
  bundle: true,
  format: "esm",
  target: ["es2022"],
  minify: true,
  legalComments: "none",
  charset: "utf8",
  outfile: join(out, "app.js"),
  logLevel: "warning",
});
for (const f of readdirSync(join(here, "static"))) copyFileSync(join(here, "static", f), join(out, f));
console.log(`built the page into ${out}`);
