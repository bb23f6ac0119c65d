// Validate a .glb with Khronos' glTF validator; print its report (JSON) on stdout.
// Usage: node validate-gltf.mjs FILE.glb
import { readFileSync } from "node:fs";
import validator from "gltf-validator";

const bytes = new Uint8Array(readFileSync(process.argv[2]));
const report = await validator.validateBytes(bytes, { maxIssues: 0, format: "glb" });
process.stdout.write(JSON.stringify(report));
