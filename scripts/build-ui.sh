#!/usr/bin/env bash
# Rebuild the web UI's vendored front-end bundle (api/ui/vendor/editor.js) from the pinned
# npm packages in ui/ (package-lock.json), and collect their licenses beside it
# (api/ui/vendor/LICENSES.txt). Only needed after changing ui/: the built files are
# committed, so installing factoryflow with pip serves a working UI with no npm at all.
set -euo pipefail
cd "$(dirname "$0")/../ui"
npm ci --no-audit --no-fund
npm run build
node -e '
const fs = require("fs"), path = require("path");
const lock = require("./package-lock.json");
const out = ["Licenses of the npm packages bundled into editor.js (from ui/package-lock.json).", ""];
for (const [where, meta] of Object.entries(lock.packages).sort()) {
  if (!where || meta.dev) continue;  // the root, and build tools (esbuild) that ship nothing
  const dir = path.join(where);
  const file = fs.readdirSync(dir).find((f) => /^licen[cs]e/i.test(f));
  const name = where.replace(/^node_modules\//, "");
  out.push("=".repeat(78), `${name} ${meta.version} (${meta.license})`, "=".repeat(78));
  out.push(file ? fs.readFileSync(path.join(dir, file), "utf8").trim() : `License: ${meta.license}`, "");
}
fs.writeFileSync("../api/ui/vendor/LICENSES.txt", out.join("\n"));
'
echo "built api/ui/vendor/editor.js and api/ui/vendor/LICENSES.txt"
