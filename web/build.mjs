// Builds the viewer bundle: web/src/viewer.js + Spark + three.js -> one minified,
// self-contained ES module in the Python package (src/mlsharp/web/static/viewer.js),
// with the licences of the bundled libraries copied beside it. The output is
// deterministic for a given package-lock.json, so the committed bundle can be checked
// by rebuilding and comparing.
import { copyFileSync, mkdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";
import { build } from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
// MLSHARP_WEB_OUT redirects the output (the test that checks the committed bundle uses it).
const outDir = process.env.MLSHARP_WEB_OUT || join(here, "..", "src", "mlsharp", "web", "static");
const outFile = join(outDir, "viewer.js");
const pkg = (name) => JSON.parse(readFileSync(join(here, "node_modules", name, "package.json")));
const three = pkg("three");
const spark = pkg("@sparkjsdev/spark");

mkdirSync(outDir, { recursive: true });
await build({
  entryPoints: [join(here, "src", "viewer.js")],
  outfile: outFile,
  bundle: true,
  format: "esm",
  platform: "browser",
  target: ["es2022"],
  minify: true,
  legalComments: "none", // the full licence texts ship beside the bundle instead
  banner: {
    js:
      `/*! mlsharp viewer. Bundles three.js ${three.version} (MIT, see three.LICENSE) and ` +
      `Spark ${spark.version} (MIT, see spark.LICENSE), which inlines fflate ` +
      "(MIT, see fflate.LICENSE). */",
  },
  logLevel: "warning",
});

copyFileSync(join(here, "node_modules", "three", "LICENSE"), join(outDir, "three.LICENSE"));
copyFileSync(
  join(here, "node_modules", "@sparkjsdev", "spark", "LICENSE"),
  join(outDir, "spark.LICENSE"),
);
// fflate (Spark's gzip decoder) is compiled into Spark's dist file, so it ships too.
copyFileSync(join(here, "node_modules", "fflate", "LICENSE"), join(outDir, "fflate.LICENSE"));

const raw = statSync(outFile).size;
const gz = gzipSync(readFileSync(outFile), { level: 9 }).length;
console.log(`${outFile}: ${(raw / 1e6).toFixed(2)} MB, ${(gz / 1e6).toFixed(2)} MB gzipped`);
