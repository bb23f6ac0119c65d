// Builds the page's vendored files into the Python package (src/mlsharp/web/static/):
// - the viewer bundle: web/src/viewer.js + Spark + three.js -> one minified,
//   self-contained ES module (viewer.js), with the licences of the bundled libraries;
// - Swagger UI for /docs (swagger/: swagger-ui-dist's prebuilt bundle and stylesheet,
//   copied as published, minus the source-map comment, with its licence and notices).
// The output is deterministic for a given package-lock.json, so the committed files can
// be checked by rebuilding and comparing. Sizes printed: raw bytes and gzip level 9.
import { copyFileSync, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
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

// Swagger UI (Apache-2.0) for the offline /docs page.
const swaggerDir = join(outDir, "swagger");
const swaggerSrc = join(here, "node_modules", "swagger-ui-dist");
mkdirSync(swaggerDir, { recursive: true });
for (const name of ["swagger-ui-bundle.js", "swagger-ui.css"]) {
  // The .map files are not shipped, so their comments would only point at 404s.
  const text = readFileSync(join(swaggerSrc, name), "utf8").replace(
    /\n?\/[*/]# sourceMappingURL=\S+?(\s*\*\/)?\s*$/,
    "\n",
  );
  writeFileSync(join(swaggerDir, name), text);
}
copyFileSync(join(swaggerSrc, "LICENSE"), join(swaggerDir, "swagger-ui.LICENSE"));
copyFileSync(join(swaggerSrc, "NOTICE"), join(swaggerDir, "swagger-ui.NOTICE"));
// Licences of the libraries compiled into swagger-ui-bundle.js (React, DOMPurify, ...).
copyFileSync(
  join(swaggerSrc, "swagger-ui-bundle.js.LICENSE.txt"),
  join(swaggerDir, "swagger-ui-bundle.js.LICENSE.txt"),
);

/** Print a file's size as served: raw and gzip-compressed (level 9, as in docs/web.md). */
function report(path) {
  const raw = statSync(path).size;
  const gz = gzipSync(readFileSync(path), { level: 9 }).length;
  console.log(`${path}: ${raw} bytes (${(raw / 1e6).toFixed(2)} MB), ${gz} gzipped (${(gz / 1e6).toFixed(2)} MB)`);
}
report(outFile);
report(join(swaggerDir, "swagger-ui-bundle.js"));
report(join(swaggerDir, "swagger-ui.css"));
