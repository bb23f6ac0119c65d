// The photo's camera from a result .ply, read with two small Range requests instead of
// downloading the whole file: the ASCII header (element sizes), then the `intrinsic` and
// `image_size` elements that mlsharp (like Apple's ml-sharp) writes after the vertices.

import { request } from "./api.js";

const TYPE_SIZES = {
  char: 1, uchar: 1, int8: 1, uint8: 1,
  short: 2, ushort: 2, int16: 2, uint16: 2,
  int: 4, uint: 4, int32: 4, uint32: 4, float: 4, float32: 4,
  double: 8, float64: 8,
};

/** Parse a PLY header: {headerLength, littleEndian, elements: [{name, count, rowSize, props}]}. */
export function parseHeader(bytes) {
  const text = new TextDecoder("latin1").decode(bytes);
  const end = text.indexOf("end_header\n");
  if (!text.startsWith("ply\n") || end < 0) return null;
  const elements = [];
  let format = null;
  for (const line of text.slice(0, end).split("\n")) {
    const words = line.trim().split(/\s+/);
    if (words[0] === "format") format = words[1];
    else if (words[0] === "element") {
      elements.push({ name: words[1], count: Number(words[2]), rowSize: 0, props: [] });
    } else if (words[0] === "property" && elements.length) {
      const element = elements[elements.length - 1];
      const size = TYPE_SIZES[words[1]];
      if (!size) return null; // list properties: sizes unknown without reading the data
      element.props.push({ type: words[1], name: words[2], offset: element.rowSize });
      element.rowSize += size;
    }
  }
  if (format !== "binary_little_endian" && format !== "binary_big_endian") return null;
  const littleEndian = format === "binary_little_endian";
  return { headerLength: end + "end_header\n".length, littleEndian, elements };
}

function readScalar(view, offset, type, little) {
  switch (type) {
    case "float": case "float32": return view.getFloat32(offset, little);
    case "double": case "float64": return view.getFloat64(offset, little);
    case "uint": case "uint32": return view.getUint32(offset, little);
    case "int": case "int32": return view.getInt32(offset, little);
    case "ushort": case "uint16": return view.getUint16(offset, little);
    case "short": case "int16": return view.getInt16(offset, little);
    case "uchar": case "uint8": return view.getUint8(offset);
    default: return view.getInt8(offset);
  }
}

async function fetchRange(url, first, last) {
  const response = await request(url, { headers: { Range: `bytes=${first}-${last}` } });
  if (response.status !== 206) {
    response.body?.cancel();
    return null; // the server ignored Range: do not download the whole file for this
  }
  return new Uint8Array(await response.arrayBuffer());
}

/**
 * The vertical field of view (degrees) and aspect ratio of the photo a .ply was made from,
 * or null when the file does not say.
 */
export async function plyCamera(url) {
  const head = await fetchRange(url, 0, 4095);
  if (!head) return null;
  const header = parseHeader(head);
  if (!header) return null;
  let offset = header.headerLength;
  const where = {};
  for (const element of header.elements) {
    where[element.name] = { ...element, start: offset };
    offset += element.count * element.rowSize;
  }
  const intrinsic = where.intrinsic;
  const size = where.image_size;
  if (!intrinsic || intrinsic.props.length !== 1) return null;
  const parts = [intrinsic, size].filter(Boolean);
  const first = Math.min(...parts.map((p) => p.start));
  const last = Math.max(...parts.map((p) => p.start + p.count * p.rowSize)) - 1;
  if (last - first > 65536) return null;
  const tail = await fetchRange(url, first, last);
  if (!tail) return null;
  const view = new DataView(tail.buffer, tail.byteOffset, tail.byteLength);
  const values = (element) =>
    Array.from({ length: element.count }, (_, i) =>
      readScalar(view, element.start - first + i * element.rowSize, element.props[0].type,
        header.littleEndian));
  const k = values(intrinsic);
  let fy;
  let width;
  let height;
  if (k.length === 9 && size && size.count === 2) {
    [width, height] = values(size);
    fy = k[4];
  } else if (k.length === 4) {
    [, fy, width, height] = k; // legacy [fx, fy, W, H]
  } else {
    return null;
  }
  if (!(fy > 0 && width > 0 && height > 0)) return null;
  return {
    vfov: (2 * Math.atan(height / (2 * fy)) * 180) / Math.PI,
    aspect: width / height,
    width,
    height,
    focalPx: fy,
  };
}

/**
 * Width and height of a PNG (the job's thumbnail) from its first 24 bytes (the IHDR
 * chunk), or null when the server ignores Range or the file is not a PNG.
 */
export async function pngSize(url) {
  const head = await fetchRange(url, 0, 23);
  if (!head || head.length < 24) return null;
  const signature = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
  if (!signature.every((byte, i) => head[i] === byte)) return null;
  const view = new DataView(head.buffer, head.byteOffset, head.byteLength);
  const width = view.getUint32(16); // big-endian, after the signature and "IHDR" header
  const height = view.getUint32(20);
  return width > 0 && height > 0 ? { width, height } : null;
}

/** Field of view of a photo `width` x `height` taken with a 35 mm-equivalent `focalMm`. */
export function cameraFromFocalMm(focalMm, width, height) {
  // As the server does: f_px = f_mm * diagonal_px / diagonal_of_36x24mm.
  const focalPx = (focalMm * Math.hypot(width, height)) / Math.hypot(36, 24);
  return {
    vfov: (2 * Math.atan(height / (2 * focalPx)) * 180) / Math.PI,
    aspect: width / height,
    width,
    height,
    focalPx,
  };
}
