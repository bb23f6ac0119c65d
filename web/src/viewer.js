// The mlsharp splat viewer: Spark (Gaussian splat renderer) on three.js, bundled by
// `npm run build` into one self-contained ES module (src/mlsharp/web/static/viewer.js).
//
// Frames. SHARP writes scenes in the OpenCV camera frame: +x right, +y down, +z forward,
// the photo's camera at the origin looking down +z. three.js cameras look down -z with +y
// up. Rotating the splat mesh 180 degrees about x maps (x, y, z) -> (x, -y, -z) once, so a
// three.js camera at the origin with no rotation sees exactly what the photo's camera saw,
// and "up" in the scene is +y.
//
// Rendering is on demand: a frame is drawn when the camera moved, the canvas was resized,
// Spark reports new sort/LoD results (onDirty) or is still sorting. An idle page costs no
// GPU time.
//
// Keyboard (while the canvas has focus): orbit mode turns with the arrow keys, moves with
// Shift+arrows, zooms with + / -; fly mode moves with W A S D (Q E or Page Down / Page Up
// down and up) and looks around with the arrow keys, + / - step forward and back; Home
// returns to the photo's viewpoint in both.

import * as THREE from "three";
import { OrbitControls } from "three/examples/jsm/controls/OrbitControls.js";
import { SparkControls, SparkRenderer, SplatMesh } from "@sparkjsdev/spark";

/** Splats drawn in "light" quality (level-of-detail budget for weak GPUs and phones). */
export const LIGHT_SPLAT_BUDGET = 400_000;

/** Orbit mode: one arrow key press turns the view by this angle (5 degrees; keys repeat). */
const KEY_TURN = Math.PI / 36;
/** Orbit mode: Shift + arrow moves the view by this many pixels. */
const KEY_PAN = 24;
/** One + / - press brings the camera this much closer (or farther). */
const KEY_ZOOM = 0.85;
/** While Spark sorts and nothing else changes, draw a frame at most this often (ms). */
const SORT_FRAME_MS = 500;
/** Animation frames without drawing (and no sort pending) after which the view is settled. */
const SETTLED_TICKS = 2;

/** File types Spark reads, by our output format name (a .sog is a zip: "pcsogszip"). */
const FILE_TYPES = {
  sog: "pcsogszip",
  spz: "spz",
  splat: "splat",
  ply: "ply",
  "ply-standard": "ply",
};

/** Vertical field of view (degrees) when nothing better is known: a 30 mm lens, 4:3. */
export const DEFAULT_VFOV = 2 * Math.atan(24 / 2 / 30) * (180 / Math.PI);

/**
 * Create a viewer that draws into a new canvas appended to `container`.
 *
 * @param {HTMLElement} container element that sizes the canvas (the canvas fills it)
 * @param {{onFirstFrame?: (ms: number) => void, lightSplatBudget?: number}} [options]
 *   lightSplatBudget: splats drawn in light quality (default LIGHT_SPLAT_BUDGET); scenes
 *   with more get a level-of-detail subset of that size.
 */
export function createViewer(container, options = {}) {
  const lightBudget = options.lightSplatBudget || LIGHT_SPLAT_BUDGET;
  const renderer = new THREE.WebGLRenderer({ antialias: false, alpha: false });
  renderer.setClearColor(0x101218, 1);
  const canvas = renderer.domElement;
  canvas.tabIndex = 0; // keyboard users focus the canvas to move the camera (see onKey)
  container.appendChild(canvas);

  const scene = new THREE.Scene();
  const camera = new THREE.PerspectiveCamera(DEFAULT_VFOV, 1, 0.01, 2000);
  const spark = new SparkRenderer({ renderer, onDirty: () => (dirty = true) });
  scene.add(spark);

  const orbit = new OrbitControls(camera, canvas);
  orbit.enableDamping = true;
  orbit.dampingFactor = 0.12;
  orbit.addEventListener("change", () => (dirty = true));
  const fly = new SparkControls({ canvas });
  fly.fpsMovement.enable = false;
  fly.pointerControls.enable = false;
  // Fly: W A S D / Q E / Page Up, Page Down move; the arrow keys look around (Spark's
  // default moves with the arrows too and looks with Home/End/Insert/Delete).
  fly.fpsMovement.keycodeMoveMapping = {
    KeyW: new THREE.Vector3(0, 0, -1),
    KeyS: new THREE.Vector3(0, 0, 1),
    KeyA: new THREE.Vector3(-1, 0, 0),
    KeyD: new THREE.Vector3(1, 0, 0),
    KeyE: new THREE.Vector3(0, 1, 0),
    KeyQ: new THREE.Vector3(0, -1, 0),
    PageUp: new THREE.Vector3(0, 1, 0),
    PageDown: new THREE.Vector3(0, -1, 0),
  };
  fly.fpsMovement.keycodeRotateMapping = {
    ArrowLeft: new THREE.Vector3(-1, 0, 0),
    ArrowRight: new THREE.Vector3(1, 0, 0),
    ArrowUp: new THREE.Vector3(0, -1, 0),
    ArrowDown: new THREE.Vector3(0, 1, 0),
  };
  fly.fpsMovement.rotateSpeed = 0.8; // radians per second while an arrow key is held
  // Spark's key handling listens on the whole document: fly with the keys only while the
  // canvas has focus, so typing in the page's fields never moves the camera.
  const syncKeys = () => {
    const active = mode === "fly" && document.activeElement === canvas;
    fly.fpsMovement.enable = active;
    if (!active) {
      fly.fpsMovement.keydown = {};
      fly.fpsMovement.keycode = {};
    }
  };
  canvas.addEventListener("focus", syncKeys);
  canvas.addEventListener("blur", syncKeys);
  canvas.addEventListener("keydown", onKey);

  let mesh = null;
  let total = 0; // splats in the file (mesh.numSplats counts the LoD subset when it is on)
  let format = null; // the format of the scene shown
  let mode = "orbit";
  let quality = "full";
  let dirty = true;
  let photo = { vfov: DEFAULT_VFOV, aspect: 4 / 3 };
  let depth = 1; // median scene depth (orbit target distance, fly speed)
  let loadStarted = 0;
  let firstFrameMs = null;
  let lastTime = performance.now();
  let frames = 0;
  let idleTicks = 0; // animation frames in a row that drew nothing
  let lastDrawn = 0; // animation time of the last frame drawn
  let benchmarking = false;

  function resize() {
    const width = Math.max(1, container.clientWidth);
    const height = Math.max(1, container.clientHeight);
    renderer.setPixelRatio(pixelRatio());
    renderer.setSize(width, height, false);
    camera.aspect = width / height;
    camera.fov = fitFov(photo, camera.aspect);
    camera.updateProjectionMatrix();
    dirty = true;
  }

  function pixelRatio() {
    const device = window.devicePixelRatio || 1;
    return quality === "light" ? Math.min(1, device) * 0.75 : Math.min(device, 2);
  }

  const observer = new ResizeObserver(resize);
  observer.observe(container);

  renderer.setAnimationLoop((time) => {
    const delta = Math.min(0.1, (time - lastTime) / 1000);
    lastTime = time;
    if (benchmarking) return; // the benchmark draws its own frames, and only those
    let moved = false;
    if (mode === "orbit") moved = orbit.update(delta);
    else moved = fly.update(camera);
    // While Spark sorts, keep drawing: its sort starts with an asynchronous GPU readback
    // whose fence Chromium only signals as frames are presented, so with nothing drawn the
    // sort (and a new level-of-detail subset) would wait for the next camera move.
    if (!(moved || dirty || spark.sorting)) {
      idleTicks += 1;
      return;
    }
    // ... but a few frames a second are enough for that.
    if (!(moved || dirty) && time - lastDrawn < SORT_FRAME_MS) return;
    lastDrawn = time;
    idleTicks = 0;
    dirty = false;
    renderer.render(scene, camera);
    frames += 1;
    if (mesh && mesh.isInitialized && firstFrameMs === null && spark.activeSplats > 0) {
      // Reading one pixel waits until the GPU has really drawn the frame (once per scene).
      const gl = renderer.getContext();
      gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, new Uint8Array(4));
      firstFrameMs = performance.now() - loadStarted;
      container.dataset.firstFrameMs = String(Math.round(firstFrameMs));
      options.onFirstFrame?.(firstFrameMs);
    }
  });

  /**
   * Keyboard control of the camera while the canvas has focus (fly mode's W A S D, Q E and
   * arrows are read by Spark's FpsMovement; this handles the rest and keeps the page from
   * scrolling on the keys the viewer uses).
   */
  function onKey(event) {
    if (event.altKey || event.ctrlKey || event.metaKey) return;
    const { key } = event;
    if (key === "Home") resetView();
    else if (key === "+" || key === "=" || event.code === "NumpadAdd") zoom(1);
    else if (key === "-" || key === "_" || event.code === "NumpadSubtract") zoom(-1);
    else if (mode === "orbit" && key.startsWith("Arrow")) orbitKey(key, event.shiftKey);
    else if (mode === "fly" && (key.startsWith("Arrow") || key.startsWith("Page"))) {
      // moved by FpsMovement in the animation loop
    } else return;
    event.preventDefault();
    dirty = true;
  }

  function orbitKey(key, pan) {
    const [x, y] = { ArrowLeft: [1, 0], ArrowRight: [-1, 0], ArrowUp: [0, 1], ArrowDown: [0, -1] }[
      key
    ] || [0, 0];
    withoutInertia(() => {
      if (pan) orbit.pan(x * KEY_PAN, y * KEY_PAN);
      else {
        if (x) orbit.rotateLeft(x * KEY_TURN);
        if (y) orbit.rotateUp(y * KEY_TURN);
      }
    });
  }

  /** One zoom step: closer (direction 1) or farther (-1). */
  function zoom(direction) {
    if (mode === "orbit") {
      withoutInertia(() => (direction > 0 ? orbit.dollyIn(KEY_ZOOM) : orbit.dollyOut(KEY_ZOOM)));
    } else {
      camera.translateZ(-direction * depth * (1 - KEY_ZOOM));
    }
  }

  /**
   * Apply a keyboard step at once: with damping, OrbitControls would spread it over ~90
   * frames, which lags behind key repeat. Inertia left from a drag is consumed first.
   */
  function withoutInertia(step) {
    orbit.enableDamping = false;
    orbit.update();
    step(); // OrbitControls' rotateLeft/pan/dolly call update(), which applies it fully
    orbit.enableDamping = true;
  }

  /** Put the camera back at the photo's viewpoint. */
  function resetView() {
    // Drop any orbit inertia first: an update without damping consumes what is left.
    withoutInertia(() => {});
    camera.position.set(0, 0, 0);
    camera.quaternion.identity();
    camera.fov = fitFov(photo, camera.aspect);
    camera.updateProjectionMatrix();
    orbit.target.set(0, 0, -depth);
    orbit.update();
    dirty = true;
  }

  /**
   * Load a scene from its bytes.
   *
   * @param {ArrayBuffer|Uint8Array} bytes the file's contents
   * @param {{format: string, frame?: string, name?: string, vfov?: number, aspect?: number}} info
   *   format: our output format name (sog, spz, splat, ply, ply-standard); frame: the file's
   *   coordinate frame, "opencv" (the model's, the default) or "opengl" (y up, z back:
   *   already three.js's); vfov (degrees) and aspect: the photo's field of view, so the
   *   first frame looks like the photo.
   * @returns {Promise<{splats: number, depth: number}>}
   */
  async function load(bytes, info) {
    unload();
    const fileType = FILE_TYPES[info.format];
    if (!fileType) throw new Error(`the viewer cannot read format ${info.format}`);
    format = info.format;
    photo = { vfov: info.vfov || DEFAULT_VFOV, aspect: info.aspect || 4 / 3 };
    idleTicks = 0;
    loadStarted = performance.now();
    firstFrameMs = null;
    delete container.dataset.firstFrameMs;
    const next = new SplatMesh({
      fileBytes: bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes),
      fileType,
      fileName: info.name || `scene.${fileType === "pcsogszip" ? "sog" : fileType}`,
    });
    if (info.frame !== "opengl") {
      next.quaternion.set(1, 0, 0, 0); // 180 degrees about x: OpenCV frame -> three.js frame
    }
    mesh = next;
    scene.add(next);
    await next.initialized;
    if (mesh !== next) return { splats: 0, depth }; // replaced while loading
    total = next.numSplats;
    depth = medianDepth(next, info.frame === "opengl" ? -1 : 1);
    fly.fpsMovement.moveSpeed = Math.max(0.2, depth * 0.6);
    // Clip planes follow the scene's scale (metres for real photos; untrained test
    // weights put everything kilometres away).
    camera.near = Math.max(1e-3, depth * 1e-3);
    camera.far = Math.max(100, depth * 1e3);
    await applyQuality();
    resize();
    resetView();
    return { splats: total, depth };
  }

  function unload() {
    if (mesh) {
      scene.remove(mesh);
      mesh.dispose();
      mesh = null;
      dirty = true;
    }
  }

  /** "orbit" (drag to turn around the scene's centre) or "fly" (WASD + drag to look). */
  function setMode(next) {
    mode = next === "fly" ? "fly" : "orbit";
    orbit.enabled = mode === "orbit";
    fly.pointerControls.enable = mode === "fly";
    fly.lastTime = 0; // no catch-up jump for the time spent orbiting
    syncKeys();
    if (mode === "orbit") {
      // Orbit around the point `depth` ahead of wherever flying left the camera.
      const ahead = new THREE.Vector3(0, 0, -depth).applyQuaternion(camera.quaternion);
      orbit.target.copy(camera.position).add(ahead);
      orbit.update();
    }
    dirty = true;
  }

  /** "full" draws every splat; "light" draws a level-of-detail subset at a lower resolution. */
  async function setQuality(next) {
    quality = next === "light" ? "light" : "full";
    await applyQuality();
    resize();
  }

  async function applyQuality() {
    if (!mesh || !mesh.packedSplats) return;
    const light = quality === "light" && total > lightBudget;
    if (light && !mesh.packedSplats.lodSplats) {
      await mesh.packedSplats.createLodSplats();
    }
    mesh.enableLod = light;
    spark.lodSplatCount = lightBudget;
    spark.maxStdDev = quality === "light" ? Math.sqrt(5) : Math.sqrt(8);
    dirty = true;
  }

  /**
   * Render `count` frames back to back while turning slightly; frames per second.
   * (For measurements: normal rendering happens only when something changed.)
   */
  async function benchmark(count = 30) {
    const gl = renderer.getContext();
    const pixels = new Uint8Array(4);
    benchmarking = true;
    const start = performance.now();
    try {
      for (let i = 0; i < count; i += 1) {
        camera.rotateY(0.002);
        renderer.render(scene, camera);
        gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, pixels); // wait for the GPU
        await new Promise((done) => setTimeout(done, 0));
      }
    } finally {
      benchmarking = false;
    }
    const seconds = (performance.now() - start) / 1000;
    resetView();
    return count / seconds;
  }

  function toggleFullscreen() {
    if (document.fullscreenElement) return document.exitFullscreen();
    return container.requestFullscreen?.();
  }

  function dispose() {
    observer.disconnect();
    renderer.setAnimationLoop(null);
    unload();
    orbit.dispose();
    renderer.dispose();
    canvas.remove();
  }

  resize();
  return {
    canvas,
    load,
    unload,
    resetView,
    setMode,
    setQuality,
    toggleFullscreen,
    benchmark,
    dispose,
    camera,
    spark, // the SparkRenderer, for measurements and diagnostics
    /** What the viewer shows and does; `settled`: nothing left to draw until the next
     * input (no camera motion, no pending sort), so a screenshot shows the final frame. */
    get stats() {
      return {
        splats: mesh ? total : 0,
        drawn: spark.activeSplats,
        lod: Boolean(mesh?.enableLod && mesh.packedSplats?.lodSplats),
        frames,
        settled:
          idleTicks >= SETTLED_TICKS && !dirty && !spark.sorting && !spark.sortDirty,
        firstFrameMs,
        mode,
        quality,
        format,
        photo: { ...photo },
        fov: camera.fov,
      };
    },
  };
}

/** Vertical field of view (degrees) that shows the whole photo in a canvas of `aspect`. */
export function fitFov(photo, aspect) {
  const halfV = (photo.vfov * Math.PI) / 360;
  if (aspect >= photo.aspect) return photo.vfov;
  // The canvas is narrower than the photo: keep the photo's horizontal extent instead.
  const halfH = Math.atan(Math.tan(halfV) * photo.aspect);
  return (2 * Math.atan(Math.tan(halfH) / aspect) * 180) / Math.PI;
}

/** Median depth (forward distance) of up to ~50k splat centres; 1 if unknown.
 * `forward` is +1 when the file's z axis points forward (OpenCV), -1 when it points back. */
function medianDepth(mesh, forward) {
  const count = mesh.numSplats || 0;
  if (count === 0) return 1;
  const stride = Math.max(1, Math.floor(count / 50_000));
  const depths = [];
  mesh.forEachSplat((index, center) => {
    const z = center.z * forward;
    if (index % stride === 0 && Number.isFinite(z) && z > 0) depths.push(z);
  });
  if (depths.length === 0) return 1;
  depths.sort((a, b) => a - b);
  return depths[Math.floor(depths.length / 2)];
}
