// Decode a .spz with Niantic's SPZ library (the @adobe/spz WebAssembly build), without
// any coordinate conversion, and print the splats as JSON on stdout.
// Usage: node spz-decode.mjs FILE.spz
import { readFileSync } from "node:fs";
import createSpzModule from "@adobe/spz";

// Its log lines would go to stdout, which carries the JSON: silenced.
const spz = await createSpzModule({ print: () => {}, printErr: () => {} });
const bytes = new Uint8Array(readFileSync(process.argv[2]));
const cloud = spz.loadSpzFromBuffer(bytes, { to: spz.CoordinateSystem.UNSPECIFIED });
const out = {
  numPoints: cloud.numPoints,
  shDegree: cloud.shDegree,
  positions: Array.from(cloud.positions),
  scales: Array.from(cloud.scales),
  rotations: Array.from(cloud.rotations),
  alphas: Array.from(cloud.alphas),
  colors: Array.from(cloud.colors),
};
process.stdout.write(JSON.stringify(out));
