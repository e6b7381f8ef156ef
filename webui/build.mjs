// Builds the chat page's browser libraries into marco_gguf/server/static/vendor/ (committed, shipped in the wheel).
//
//   cd webui && npm ci && npm run build      (or ./build.sh)
//
// Outputs, all ES modules or plain files the page loads from its own server (nothing from another host):
//   vendor.js    markdown-it (GFM markdown), DOMPurify (sanitiser), highlight.js with its 36 "common" languages
//   katex.js     KaTeX, imported by the page only when a message holds math
//   katex.css    KaTeX's stylesheet, its fonts reduced to woff2 (every browser the page supports reads it)
//   fonts/       KaTeX's woff2 fonts
//   LICENSES.txt the licence of every package that went into the bundles, with its version
// The versions are pinned in package.json and package-lock.json; the page's own code (static/js/) is not built.
import * as esbuild from "esbuild";
import fs from "node:fs";
import path from "node:path";

const here = path.dirname(new URL(import.meta.url).pathname);
const out = path.resolve(here, "../marco_gguf/server/static/vendor");
const katexDist = path.join(here, "node_modules/katex/dist");

fs.rmSync(out, { recursive: true, force: true });
fs.mkdirSync(path.join(out, "fonts"), { recursive: true });

const result = await esbuild.build({
  entryPoints: { vendor: path.join(here, "src/vendor.js"), katex: path.join(here, "src/katex.js") },
  bundle: true,
  format: "esm",
  minify: true,
  target: "es2020",
  outdir: out,
  legalComments: "none", // the licences go to LICENSES.txt, in full
  metafile: true,
  logLevel: "warning",
});

// KaTeX's CSS lists woff2, woff and ttf for each font; keep woff2 only, and ship just those files
const css = fs.readFileSync(path.join(katexDist, "katex.min.css"), "utf8");
const fallbacks = /,url\(fonts\/[\w-]+\.woff\) format\("woff"\),url\(fonts\/[\w-]+\.ttf\) format\("truetype"\)/g;
const slim = css.replace(fallbacks, "");
const fonts = [...slim.matchAll(/url\(fonts\/([\w-]+\.woff2)\)/g)].map((m) => m[1]);
if (fonts.length < 20 || /\.(woff|ttf)\)/.test(slim)) throw new Error("katex.min.css changed shape: check the font rewrite");
fs.writeFileSync(path.join(out, "katex.css"), slim);
for (const font of fonts) fs.copyFileSync(path.join(katexDist, "fonts", font), path.join(out, "fonts", font));

// one licence per package whose files went into a bundle
const packages = new Set();
for (const output of Object.values(result.metafile.outputs)) {
  for (const input of Object.keys(output.inputs)) {
    const m = input.match(/node_modules\/((?:@[^/]+\/)?[^/]+)\//);
    if (m) packages.add(m[1]);
  }
}
const sections = [...packages].sort().map((name) => {
  const dir = path.join(here, "node_modules", name);
  const meta = JSON.parse(fs.readFileSync(path.join(dir, "package.json"), "utf8"));
  const files = fs.readdirSync(dir).filter((f) => /^licen[cs]e/i.test(f)).sort();
  if (!files.length) throw new Error(`${name}: no licence file`);
  const texts = files.map((f) => fs.readFileSync(path.join(dir, f), "utf8").trim());
  return `${"=".repeat(78)}\n${name} ${meta.version} (${meta.license})\n${"=".repeat(78)}\n\n${texts.join("\n\n")}\n`;
});
fs.writeFileSync(
  path.join(out, "LICENSES.txt"),
  "Third-party code in vendor.js, katex.js, katex.css and fonts/ (built by webui/build.mjs)\n\n" +
    sections.join("\n"),
);

for (const f of fs.readdirSync(out).sort()) {
  const p = path.join(out, f);
  const size = fs.statSync(p).isDirectory()
    ? fs.readdirSync(p).reduce((n, g) => n + fs.statSync(path.join(p, g)).size, 0)
    : fs.statSync(p).size;
  console.log(`${f.padEnd(14)} ${(size / 1024).toFixed(1).padStart(7)} KiB`);
}
