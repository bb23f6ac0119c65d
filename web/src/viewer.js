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
// or Spark reports new sort/LoD results (onDirty). An idle page costs no GPU time.

import * as THREE from "three";
import { OrbitControls } from "three/examples/jsm/controls/OrbitControls.js";
import { SparkControls, SparkRenderer, SplatMesh } from "@sparkjsdev/spark";

/** Splats drawn in "light" quality (level-of-detail budget for weak GPUs and phones). */
export const LIGHT_SPLAT_BUDGET = 400_000;

/** File types Spark reads, by our output format name. */
const FILE_TYPES = { spz: "spz", splat: "splat", ply: "ply", "ply-standard": "ply" };

/** Vertical field of view (degrees) when nothing better is known: a 30 mm lens, 4:3. */
export const DEFAULT_VFOV = 2 * Math.atan(24 / 2 / 30) * (180 / Math.PI);

/**
 * Create a viewer that draws into a new canvas appended to `container`.
 *
 * @param {HTMLElement} container element that sizes the canvas (the canvas fills it)
 * @param {{onFirstFrame?: (ms: number) => void}} [options]
 */
export function createViewer(container, options = {}) {
  const renderer = new THREE.WebGLRenderer({ antialias: false, alpha: false });
  renderer.setClearColor(0x101218, 1);
  const canvas = renderer.domElement;
  canvas.tabIndex = 0; // keyboard users can focus the canvas to fly with WASD / arrows
  container.appendChild(canvas);

  const scene = new THREE.Scene();
  const camera = new THREE.PerspectiveCamera(DEFAULT_VFOV, 1, 0.01, 2000);
  const spark = new SparkRenderer({ renderer, onDirty: () => (dirty = true) });
  scene.add(spark);

  const orbit = new OrbitControls(camera, canvas);
  orbit.enableDamping = true;
  orbit.dampingFactor = 0.12;
  orbit.listenToKeyEvents(canvas); // arrow keys pan while the canvas has focus
  orbit.addEventListener("change", () => (dirty = true));
  const fly = new SparkControls({ canvas });
  fly.fpsMovement.enable = false;
  fly.pointerControls.enable = false;
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

  let mesh = null;
  let mode = "orbit";
  let quality = "full";
  let dirty = true;
  let photo = { vfov: DEFAULT_VFOV, aspect: 4 / 3 };
  let depth = 1; // median scene depth (orbit target distance, fly speed)
  let loadStarted = 0;
  let firstFrameMs = null;
  let lastTime = performance.now();
  let frames = 0;

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
    let moved = false;
    if (mode === "orbit") moved = orbit.update(delta);
    else moved = fly.update(camera);
    if (!(moved || dirty)) return;
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

  /** Put the camera back at the photo's viewpoint. */
  function resetView() {
    // Drop any orbit inertia first: an update without damping consumes what is left.
    orbit.enableDamping = false;
    orbit.update();
    orbit.enableDamping = true;
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
   *   format: our output format name (spz, splat, ply, ply-standard); frame: the file's
   *   coordinate frame, "opencv" (the model's, the default) or "opengl" (y up, z back:
   *   already three.js's); vfov (degrees) and aspect: the photo's field of view, so the
   *   first frame looks like the photo.
   * @returns {Promise<{splats: number, depth: number}>}
   */
  async function load(bytes, info) {
    unload();
    const fileType = FILE_TYPES[info.format];
    if (!fileType) throw new Error(`the viewer cannot read format ${info.format}`);
    photo = { vfov: info.vfov || DEFAULT_VFOV, aspect: info.aspect || 4 / 3 };
    loadStarted = performance.now();
    firstFrameMs = null;
    delete container.dataset.firstFrameMs;
    const next = new SplatMesh({
      fileBytes: bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes),
      fileType,
      fileName: info.name || `scene.${fileType}`,
    });
    if (info.frame !== "opengl") {
      next.quaternion.set(1, 0, 0, 0); // 180 degrees about x: OpenCV frame -> three.js frame
    }
    mesh = next;
    scene.add(next);
    await next.initialized;
    if (mesh !== next) return { splats: 0, depth }; // replaced while loading
    depth = medianDepth(next, info.frame === "opengl" ? -1 : 1);
    fly.fpsMovement.moveSpeed = Math.max(0.2, depth * 0.6);
    // Clip planes follow the scene's scale (metres for real photos; untrained test
    // weights put everything kilometres away).
    camera.near = Math.max(1e-3, depth * 1e-3);
    camera.far = Math.max(100, depth * 1e3);
    await applyQuality();
    resize();
    resetView();
    return { splats: next.numSplats, depth };
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
    const light = quality === "light" && mesh.numSplats > LIGHT_SPLAT_BUDGET;
    if (light && !mesh.packedSplats.lodSplats) {
      await mesh.packedSplats.createLodSplats();
    }
    mesh.enableLod = light;
    spark.lodSplatCount = LIGHT_SPLAT_BUDGET;
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
    const start = performance.now();
    for (let i = 0; i < count; i += 1) {
      camera.rotateY(0.002);
      renderer.render(scene, camera);
      gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, pixels); // wait for the GPU
      await new Promise((done) => setTimeout(done, 0));
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
    get stats() {
      return {
        splats: mesh ? mesh.numSplats : 0,
        drawn: spark.activeSplats,
        frames,
        firstFrameMs,
        mode,
        quality,
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
