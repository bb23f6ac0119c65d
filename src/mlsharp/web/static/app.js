// The mlsharp web page: pick a photo, submit it to /v1/jobs, follow the job's events,
// show the result in the splat viewer, offer its files for download, list recent jobs.
// Plain ES modules, no framework. The viewer bundle (Spark + three.js, ~1 MB gzipped) is
// imported only when a scene is about to be shown.

import * as api from "./api.js";
import { cameraFromFocalMm, plyCamera, pngSize } from "./plycamera.js";
import { has, initialLanguage, language, setLanguage, t } from "./i18n.js";

/**
 * Formats the viewer reads, smallest first, for servers without /v1/info (newer ones say
 * which formats the viewer reads and their typical bytes per splat: see viewerFormats).
 */
const FALLBACK_VIEWABLE = ["sog", "spz", "splat", "ply-standard", "ply"];
/** Coordinate frame of each scene format as the server writes it, when /v1/info is missing. */
const DEFAULT_FRAMES = {
  sog: "opencv",
  spz: "opengl",
  splat: "opencv",
  "ply-standard": "opencv",
  ply: "opencv",
};
const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
const QUALITY_STORAGE = "mlsharp.quality";
/** Width / height of an equirectangular 360° panorama, and how far off a photo may be. */
const PANORAMA_ASPECT = 2;
const PANORAMA_TOLERANCE = 0.01;
/** A panorama's stage "view K/N" (service/jobs.py). */
const VIEW_STAGE = /^view (\d+)\/(\d+)$/;
/** The download status line moves in steps of this many percent (it is announced). */
const DOWNLOAD_STEP = 10;

const $ = (selector) => document.querySelector(selector);

const ui = {
  lang: $("#lang"),
  keyToggle: $("#key-toggle"),
  keyPanel: $("#key-panel"),
  keyForm: $("#key-form"),
  keyInput: $("#key-input"),
  keyForget: $("#key-forget"),
  form: $("#upload-form"),
  drop: $("#drop"),
  file: $("#file"),
  preview: $("#preview"),
  fileName: $("#file-name"),
  focal: $("#focal"),
  detail: $("#detail"),
  panorama: $("#panorama"),
  formats: $("#formats"),
  formatList: $("#format-list"),
  submit: $("#submit"),
  progressBox: $("#progress-box"),
  progress: $("#progress"),
  stage: $("#stage"),
  status: $("#status"),
  error: $("#error"),
  viewerSection: $("#viewer-section"),
  viewer: $("#viewer"),
  viewerEmpty: $("#viewer-empty"),
  modeButtons: document.querySelectorAll("[data-mode]"),
  reset: $("#reset"),
  fullscreen: $("#fullscreen"),
  quality: $("#quality"),
  downloads: $("#downloads"),
  downloadCount: $("#download-count"),
  downloadList: $("#download-list"),
  historyList: $("#history-list"),
  historyEmpty: $("#history-empty"),
  historyRefresh: $("#history-refresh"),
};

const state = {
  info: null, // GET /v1/info, when the server has it
  file: null,
  photo: null, // {width, height} of the selected photo, for the fallback camera
  photoJobId: null, // the job made from that photo
  job: null, // the job shown
  follow: null, // AbortController of the event stream being followed
  viewer: null,
  viewerPromise: null,
  status: null, // {key, params} of the status line, re-rendered on language change
  error: null, // the error shown, re-rendered on language change
  history: [], // the jobs listed under "Recent jobs", re-labelled on language change
  historyRequest: 0, // sequence number of the latest history fetch
};

/** An error of the page itself (not from the API), with a translatable code. */
class PageError extends Error {
  constructor(code, params = {}, detail = "") {
    super(detail || code);
    this.code = code;
    this.params = params;
    this.detail = detail;
  }
}

// ---------------------------------------------------------------- messages

function setStatus(key, params = {}) {
  state.status = key ? { key, params } : null;
  ui.status.textContent = key ? t(key, params) : "";
}

function clearError() {
  state.error = null;
  ui.error.hidden = true;
  ui.error.replaceChildren();
}

/**
 * Show an error: a translated sentence for its code plus the server's own message. A
 * missing or refused API key also opens (and focuses) the key field.
 */
function showError(error) {
  if (error?.name === "AbortError") return;
  state.error = error;
  renderError(error);
  const code = error.code || "unknown";
  if (code === "unauthorized" || code === "forbidden") openKeyPanel(true);
  if (!(error instanceof api.ApiError) && !(error instanceof PageError)) console.error(error);
}

/** The translated sentence of an error, e.g. "The server is busy. Try again in 5 s." */
function errorTitle(error) {
  const code = error.code || "unknown";
  const params = { ...(error.params || {}) };
  if (code === "unauthorized") return t("apiKeyNeeded");
  if (code === "forbidden") return t("apiKeyWrong");
  // A 404 says what was missing: the job, or one of its files.
  if (code === "not_found" && error.subject) return t(`error.${error.subject}_not_found`);
  if (error.retryAfter && has(`error.${code}.retry`)) {
    return t(`error.${code}.retry`, { ...params, seconds: error.retryAfter });
  }
  if (has(`error.${code}`)) return t(`error.${code}`, params);
  if (error.status) return t("error.http", { status: error.status });
  return t("error.title");
}

/** Fill the error box (also on a language change, which must not move the focus). */
function renderError(error) {
  const code = error.code || "unknown";
  const heading = document.createElement("strong");
  heading.textContent = errorTitle(error);
  ui.error.replaceChildren(heading);
  const detail = error instanceof PageError ? error.detail : error.message;
  if (detail && detail !== code) {
    const text = document.createElement("span");
    text.className = "detail";
    text.textContent = detail;
    ui.error.append(" ", text);
  }
  if (error.requestId) {
    const id = document.createElement("small");
    id.className = "request-id";
    id.textContent = `request id: ${error.requestId}`;
    ui.error.append(id);
  }
  ui.error.hidden = false;
  ui.error.dataset.code = code;
}

/** Mark a 404 as being about `subject` ("job" or "file"), for its message. */
function about(subject) {
  return (error) => {
    if (error?.code === "not_found") error.subject = subject;
    throw error;
  };
}

function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  const units = ["KB", "MB", "GB"];
  let value = bytes;
  let unit = "B";
  for (const next of units) {
    if (value < 1024) break;
    value /= 1024;
    unit = next;
  }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${unit}`;
}

// ---------------------------------------------------------------- language and API key

function applyLanguage(lang) {
  setLanguage(lang);
  ui.lang.value = language();
  if (state.status) ui.status.textContent = t(state.status.key, state.status.params);
  if (state.error) renderError(state.error);
  labelViewer();
  labelFullscreen();
  labelDetail();
  if (state.job) renderProgress(state.job);
  if (state.file) describeFile(state.file);
  renderDownloads(state.job);
  labelHistory();
  refreshHistory({ quiet: true });
}

function openKeyPanel(focus) {
  ui.keyPanel.hidden = false;
  ui.keyToggle.setAttribute("aria-expanded", "true");
  if (focus) ui.keyInput.focus();
}

function toggleKeyPanel() {
  if (ui.keyPanel.hidden) openKeyPanel(true);
  else {
    ui.keyPanel.hidden = true;
    ui.keyToggle.setAttribute("aria-expanded", "false");
  }
}

function saveKey(event) {
  event.preventDefault();
  api.storeKey(ui.keyInput.value.trim());
  ui.keyInput.value = "";
  clearError();
  setStatus(api.hasKey() ? "apiKeySaved" : "apiKeyForgotten");
  loadInfo();
  refreshHistory({ quiet: true });
}

function forgetKey() {
  api.storeKey("");
  ui.keyInput.value = "";
  setStatus("apiKeyForgotten");
}

// ---------------------------------------------------------------- server info and formats

/** The coordinate frame the server writes `format` in ("opencv" or "opengl"). */
function frameOf(format) {
  const described = state.info?.formats.find((f) => f.name === format);
  return described?.frame || DEFAULT_FRAMES[format] || "opencv";
}

async function loadInfo() {
  try {
    state.info = await api.json("/v1/info");
  } catch (error) {
    if (error.code === "unauthorized" || error.code === "forbidden") showError(error);
    state.info = null; // an older server, or no key yet: the server's defaults apply
  }
  if (state.info?.auth_required && !api.hasKey()) openKeyPanel(false);
  renderFormats();
}

/**
 * The formats the viewer reads, smallest first: from /v1/info (its `viewer` flag and
 * typical `bytes_per_splat`), else the list the page knows.
 */
function viewerFormats() {
  const described = state.info?.formats.filter((f) => f.viewer && f.bytes_per_splat);
  if (!described?.length) return FALLBACK_VIEWABLE;
  return described.sort((a, b) => a.bytes_per_splat - b.bytes_per_splat).map((f) => f.name);
}

/**
 * Checkboxes for the output formats: the server's defaults plus the smallest format the
 * viewer reads (so the scene downloads as fast as it can).
 */
function renderFormats() {
  const info = state.info;
  const names = info ? info.formats.map((f) => f.name) : [];
  if (names.length < 2) {
    ui.formats.hidden = true;
    ui.formatList.replaceChildren();
    return;
  }
  const wanted = new Set(info.default_formats);
  const smallest = viewerFormats().find((name) => names.includes(name));
  if (smallest) wanted.add(smallest);
  const previous = new Set(
    [...ui.formatList.querySelectorAll("input:checked")].map((input) => input.value),
  );
  const boxes = names.map((name) => {
    const label = document.createElement("label");
    label.className = "check";
    const input = document.createElement("input");
    input.type = "checkbox";
    input.name = "formats";
    input.value = name;
    input.checked = previous.size ? previous.has(name) : wanted.has(name);
    label.append(input, ` ${name}`);
    return label;
  });
  ui.formatList.replaceChildren(...boxes);
  ui.formats.hidden = false;
}

/** The detail presets say how many splats in the page's language ("300,000 splats"). */
function labelDetail() {
  for (const option of ui.detail.options) {
    if (option.value) {
      const count = Number(option.value).toLocaleString(language());
      option.textContent = t("detailSplats", { count });
    }
  }
}

function chosenFormats() {
  if (ui.formats.hidden) return null;
  const names = [...ui.formatList.querySelectorAll("input:checked")].map((i) => i.value);
  return names.length ? names.join(",") : null;
}

// ---------------------------------------------------------------- choosing a photo

function describeFile(file) {
  const params = { name: file.name || "image", size: formatBytes(file.size) };
  ui.fileName.textContent = t("selected", params);
}

function selectFile(file) {
  if (!file) return;
  clearError();
  state.file = file;
  state.photo = null;
  state.photoJobId = null;
  describeFile(file);
  if (ui.preview.src) URL.revokeObjectURL(ui.preview.src);
  ui.preview.hidden = true;
  ui.panorama.checked = false;
  ui.preview.onload = () => {
    ui.preview.hidden = false;
    state.photo = { width: ui.preview.naturalWidth, height: ui.preview.naturalHeight };
    ui.panorama.checked = looksLikePanorama(state.photo);
  };
  ui.preview.onerror = () => {
    ui.preview.hidden = true; // e.g. HEIC, which most browsers cannot show; the server can
  };
  ui.preview.src = URL.createObjectURL(file);
  ui.submit.disabled = false;
  loadViewerModule(); // start fetching the viewer while the photo is processed
}

/** A 2:1 photo is taken for an equirectangular panorama (the user can untick it). */
function looksLikePanorama({ width, height }) {
  const aspect = height > 0 ? width / height : 0;
  return Math.abs(aspect - PANORAMA_ASPECT) <= PANORAMA_TOLERANCE * PANORAMA_ASPECT;
}

/**
 * The drop zone is a button for the keyboard too, with a native button's timing: Enter
 * opens the file picker when pressed, Space when released (its keydown would scroll).
 */
function onDropZoneKey(event) {
  if (event.key !== "Enter" && event.key !== " ") return;
  event.preventDefault();
  const opens = event.key === "Enter" ? "keydown" : "keyup";
  if (event.type === opens && !event.repeat) ui.file.click();
}

/** A file dropped anywhere on the page (the drop zone included: one listener, one file). */
function onDrop(event) {
  event.preventDefault();
  ui.drop.classList.remove("dragging");
  const file = event.dataTransfer?.files?.[0];
  if (file) selectFile(file);
}

function onPaste(event) {
  const items = [...(event.clipboardData?.items || [])];
  const item = items.find((i) => i.kind === "file" && i.type.startsWith("image/"));
  const file = item?.getAsFile();
  if (!file) return; // ordinary text pasted into a field
  event.preventDefault();
  const ext = (file.type.split("/")[1] || "png").replace("jpeg", "jpg");
  selectFile(file.name ? file : new File([file], `pasted.${ext}`, { type: file.type }));
}

// ---------------------------------------------------------------- submitting and following

async function submit(event) {
  event.preventDefault();
  clearError();
  const file = state.file;
  if (!file) {
    showError(new PageError("no_file"));
    return;
  }
  const limit = state.info?.max_upload_bytes;
  if (limit && file.size > limit) {
    const sizes = { size: formatBytes(file.size), limit: formatBytes(limit) };
    showError(new PageError("file_too_large", sizes));
    return;
  }
  const body = new FormData();
  body.append("file", file, file.name || "image");
  const focal = ui.focal.value.trim();
  if (focal) body.append("focal_mm", focal);
  const formats = chosenFormats();
  if (formats) body.append("formats", formats);
  if (ui.detail.value) body.append("max_splats", ui.detail.value);
  // Unticked, the field is left out: the server still reads a panorama's own XMP tag.
  if (ui.panorama.checked) body.append("panorama", "true");
  ui.submit.disabled = true;
  setStatus("uploading", { name: file.name || "image" });
  try {
    const created = await api.json("/v1/jobs", { method: "POST", body });
    state.photoJobId = created.id;
    setStatus(null);
    await openJob(created.id);
  } catch (error) {
    setStatus(null);
    showError(error);
  } finally {
    ui.submit.disabled = !state.file;
  }
}

function stageName(stage) {
  const view = VIEW_STAGE.exec(stage);
  if (view) return t("stage.view", { index: view[1], total: view[2] });
  return has(`stage.${stage}`) ? t(`stage.${stage}`) : stage;
}

function renderProgress(job) {
  if (!job) return;
  ui.progressBox.hidden = false;
  ui.progress.value = job.progress;
  ui.progress.dataset.stage = job.stage;
  const percent = Math.round(job.progress * 100);
  ui.stage.textContent = t("progress", { stage: stageName(job.stage), percent });
}

/** Show a job: follow it while it runs, then its result or its error. */
async function openJob(id) {
  state.follow?.abort();
  const controller = new AbortController();
  state.follow = controller;
  clearError();
  const url = new URL(location.href);
  url.searchParams.set("job", id);
  url.searchParams.delete("scene");
  history.replaceState(null, "", url);
  try {
    let job = await api
      .json(`/v1/jobs/${encodeURIComponent(id)}`, { signal: controller.signal })
      .catch(about("job"));
    showJob(job);
    if (!TERMINAL.has(job.status)) job = await followJob(job, controller.signal);
    if (controller.signal.aborted) return;
    refreshHistory({ quiet: true });
    if (job.status === "succeeded") await showResult(job);
    else if (job.status === "failed") {
      const failure = job.error || { code: "job_failed", message: "" };
      const code = has(`error.${failure.code}`) ? failure.code : "job_failed";
      showError(new PageError(code, {}, failure.message));
    } else if (job.status === "canceled") showError(new PageError("job_canceled"));
  } catch (error) {
    if (!controller.signal.aborted) showError(error);
  }
}

function showJob(job) {
  state.job = job;
  renderProgress(job);
  renderDownloads(job);
}

/** Follow the job's event stream until `event: end`; reconnects after network errors. */
async function followJob(job, signal) {
  let failures = 0;
  let last = job;
  for (;;) {
    try {
      for await (const message of api.events(`/v1/jobs/${encodeURIComponent(job.id)}/events`, {
        signal,
      })) {
        const data = JSON.parse(message.data);
        if (data.deleted) throw new PageError("job_deleted");
        failures = 0;
        if (state.status?.key === "reconnecting") setStatus(null);
        last = data;
        showJob(data);
        if (message.event === "end" || TERMINAL.has(data.status)) return data;
      }
    } catch (error) {
      if (signal.aborted || error instanceof PageError) throw error;
      if (!(error instanceof api.ApiError) || error.status !== 0) throw error;
      failures += 1;
      if (failures > 10) throw error;
    }
    // The stream ended early or the network dropped: its first event on reconnection is
    // the job's current state, so nothing is missed.
    setStatus("reconnecting");
    await new Promise((resolve) => setTimeout(resolve, Math.min(2000 * failures || 500, 10000)));
    if (signal.aborted) return last;
  }
}

// ---------------------------------------------------------------- result, viewer, downloads

function renderDownloads(job) {
  const results = job?.status === "succeeded" ? job.links.results : {};
  // The thumbnail (`preview`) belongs to the history list, not to the downloads.
  const entries = Object.entries(results || {}).filter(([format]) => format !== "preview");
  ui.downloads.hidden = entries.length === 0;
  const splats = job?.status === "succeeded" ? job.splats : null;
  ui.downloadCount.textContent = splats
    ? t("downloadsCount", { count: splats.toLocaleString(language()) })
    : "";
  ui.downloadList.replaceChildren(
    ...entries.map(([format, url]) => {
      const link = document.createElement("a");
      link.className = "button";
      link.href = url;
      link.download = "";
      link.dataset.format = format;
      const size = job.sizes?.[format];
      link.textContent = t("downloadAs", { format: format.toUpperCase() });
      if (size) link.textContent += ` (${formatBytes(size)})`;
      link.addEventListener("click", (event) => {
        if (!api.hasKey()) return; // a plain link works on an open server
        event.preventDefault(); // links cannot send the key: fetch, then save the blob
        api.download(url, `${job.input_name}.${format}`).catch(about("file")).catch(showError);
      });
      return link;
    }),
  );
}

function loadViewerModule() {
  if (!state.viewerPromise) {
    const src = document.querySelector('meta[name="mlsharp-viewer"]').content;
    state.viewerPromise = import(src).catch((error) => {
      state.viewerPromise = null;
      throw new PageError("viewer", {}, String(error.message || error));
    });
  }
  return state.viewerPromise;
}

async function getViewer() {
  if (state.viewer) return state.viewer;
  const module = await loadViewerModule();
  const budget = Number(new URLSearchParams(location.search).get("light-budget"));
  try {
    state.viewer = module.createViewer(ui.viewer, {
      lightSplatBudget: budget > 0 ? budget : undefined,
      onFirstFrame: (ms) => {
        ui.viewer.dataset.ready = "true";
        console.info(`mlsharp viewer: first frame ${Math.round(ms)} ms`);
      },
    });
  } catch (error) {
    throw new PageError("webgl", {}, String(error.message || error));
  }
  window.mlsharp = { viewer: state.viewer }; // for measurements from the console or tests
  const canvas = state.viewer.canvas;
  // A focusable widget that takes the arrow keys: screen readers pass keys through to it.
  canvas.setAttribute("role", "application");
  canvas.setAttribute("aria-describedby", "controls-help");
  labelViewer();
  ui.viewerEmpty.hidden = true;
  state.viewer.setQuality(ui.quality.value);
  return state.viewer;
}

function labelViewer() {
  state.viewer?.canvas.setAttribute("aria-label", t("viewerLabel"));
}

/**
 * The photo's camera for a job: its .ply's intrinsics; else the photo picked in this
 * session, or the job's thumbnail (same aspect as the photo), with the job's focal length
 * (30 mm when the job does not record one: it then came from EXIF or the default).
 */
async function jobCamera(job) {
  for (const format of ["ply", "ply-standard"]) {
    const url = job.links.results[format];
    if (!url) continue;
    try {
      const camera = await plyCamera(url);
      if (camera) return camera;
    } catch (error) {
      console.warn("could not read the camera from the .ply", error);
    }
  }
  if (state.photo && state.photoJobId === job.id) {
    return cameraFromFocalMm(job.focal_mm || 30, state.photo.width, state.photo.height);
  }
  const preview = job.links.results.preview;
  const size = preview ? await pngSize(preview).catch(() => null) : null;
  if (size) return cameraFromFocalMm(job.focal_mm || 30, size.width, size.height);
  return {};
}

/**
 * The result the viewer loads: of the formats it reads, the job's smallest file (its
 * `sizes`), else the smallest kind of file.
 */
function viewerChoice(job) {
  const results = job.links.results || {};
  const readable = viewerFormats().filter((name) => name in results);
  const size = (name) => job.sizes?.[name] ?? Number.POSITIVE_INFINITY;
  return readable.reduce((best, name) => (size(name) < size(best) ? name : best), readable[0]);
}

async function showResult(job) {
  const results = job.links.results || {};
  const format = viewerChoice(job);
  if (!format) {
    showError(new PageError("no_viewable", { formats: Object.keys(results).join(", ") }));
    return;
  }
  await showScene(results[format], format, () => jobCamera(job), frameOf(format), {
    panorama: Boolean(job.panorama),
  });
}

/**
 * Download a scene file and show it; `camera` resolves to {vfov, aspect} or {}.
 * `frame` is the file's coordinate frame (default: how the server writes `format`).
 * A panorama opens from its centre looking forward, in fly mode: dragging looks around
 * in place, W A S D walk.
 */
async function showScene(
  url,
  format,
  camera,
  frame = frameOf(format),
  { panorama = false } = {},
) {
  const signal = state.follow?.signal;
  ui.viewer.dataset.ready = "false";
  setStatus("downloadingScene", { percent: "" });
  let shown = -1; // the step last announced: the status line is a live region
  const onProgress = (received, total) => {
    const step = total
      ? Math.floor((100 * received) / total / DOWNLOAD_STEP) * DOWNLOAD_STEP
      : Math.floor(received / 2 ** 20); // whole megabytes when the size is unknown
    if (step === shown) return;
    shown = step;
    setStatus("downloadingScene", { percent: total ? `${step}%` : formatBytes(received) });
  };
  const [viewer, bytes, view] = await Promise.all([
    getViewer(),
    api
      .request(url, { signal })
      .then((response) => api.readAll(response, onProgress))
      .catch(about("file")),
    camera(),
  ]);
  if (signal?.aborted) return;
  setStatus("preparingViewer");
  try {
    const loaded = await viewer.load(bytes, { format, frame, ...view });
    ui.viewer.dataset.splats = String(loaded.splats);
    // load() put the camera at the centre looking forward; a panorama is explored from
    // there in fly mode. A photo after a panorama goes back to orbiting.
    // (The focus stays where the user left it: nothing moves it when a job finishes.)
    if (panorama) setMode("fly", { focus: false });
    else if (ui.viewer.dataset.panorama === "true") setMode("orbit");
    ui.viewer.dataset.panorama = String(panorama);
    const count = loaded.splats.toLocaleString(language());
    setStatus(panorama ? "panoramaReady" : "sceneReady", { count });
  } catch (error) {
    throw new PageError("viewer", {}, String(error.message || error));
  }
}

function setMode(mode, { focus = true } = {}) {
  for (const button of ui.modeButtons) {
    button.setAttribute("aria-pressed", String(button.dataset.mode === mode));
  }
  state.viewer?.setMode(mode);
  if (mode === "fly" && focus) state.viewer?.canvas.focus();
}

function toggleFullscreen() {
  if (document.fullscreenElement) document.exitFullscreen();
  else ui.viewerSection.requestFullscreen?.().catch(() => {});
}

/** The fullscreen button says what it will do; browsers without fullscreen get none. */
function labelFullscreen() {
  ui.fullscreen.hidden = !document.fullscreenEnabled;
  ui.fullscreen.textContent = t(document.fullscreenElement ? "exitFullscreen" : "fullscreen");
}

// ---------------------------------------------------------------- recent jobs

async function refreshHistory({ quiet = false } = {}) {
  // Several refreshes can be in flight (job finished, language, key): only the newest lands.
  const request = ++state.historyRequest;
  ui.historyList.setAttribute("aria-busy", "true");
  let page;
  try {
    page = await api.json("/v1/jobs?limit=20");
  } catch (error) {
    if (request !== state.historyRequest) return;
    ui.historyList.setAttribute("aria-busy", "false");
    if (!quiet) showError(error);
    return;
  }
  if (request !== state.historyRequest) return;
  ui.historyList.setAttribute("aria-busy", "false");
  state.history = page.items;
  ui.historyEmpty.hidden = page.items.length > 0;
  ui.historyList.replaceChildren(...page.items.map(historyItem));
  labelHistory();
}

/** One <li> of the recent jobs (its words are set by labelHistory). */
function historyItem(job) {
  const item = document.createElement("li");
  item.dataset.job = job.id;
  const open = document.createElement("button");
  open.type = "button";
  open.className = "linklike";
  open.textContent = job.input_name;
  open.addEventListener("click", () => {
    ui.viewerSection.scrollIntoView({ behavior: "smooth", block: "start" });
    openJob(job.id);
  });
  const status = document.createElement("span");
  status.className = `badge ${job.status}`;
  const when = document.createElement("time");
  when.dateTime = job.created_at;
  const thumb = historyThumbnail(job);
  if (thumb) item.append(thumb);
  item.append(open, " ", status, " ", when);
  return item;
}

/**
 * Puts the current language's words on the listed jobs, in place: a language switch
 * re-labels the list at once, without fetching it or its thumbnails again.
 */
function labelHistory() {
  for (const job of state.history) {
    const item = ui.historyList.querySelector(`li[data-job="${CSS.escape(job.id)}"]`);
    if (!item) continue;
    const verb = t(TERMINAL.has(job.status) ? "open" : "follow");
    item.querySelector("button").setAttribute("aria-label", `${verb}: ${job.input_name}`);
    item.querySelector(".badge").textContent = t(`status.${job.status}`);
    item.querySelector("time").textContent = new Date(job.created_at).toLocaleString(language());
    const thumb = item.querySelector("img.thumb");
    if (thumb) thumb.alt = t("previewAlt", { name: job.input_name });
  }
}

/**
 * The job's `preview` result as an <img>, or null when it has none. An <img src> cannot
 * send the API key, so the PNG is fetched through the API client and shown from a blob:
 * URL (the page's CSP allows blob: images); the URL is revoked once the image is decoded.
 */
function historyThumbnail(job) {
  const url = job.links?.results?.preview;
  if (!url) return null;
  const img = document.createElement("img");
  img.className = "thumb";
  img.loading = "lazy";
  img.decoding = "async";
  img.width = 64;
  img.height = 48;
  img.addEventListener("load", () => URL.revokeObjectURL(img.src), { once: true });
  api
    .request(url)
    .then((response) => response.blob())
    .then((blob) => {
      img.src = URL.createObjectURL(blob);
    })
    .catch((error) => {
      img.remove(); // expired or deleted meanwhile: no thumbnail, no error box
      console.warn(`no preview for job ${job.id}`, error);
    });
  return img;
}

// ---------------------------------------------------------------- start

function bind() {
  ui.lang.addEventListener("change", () => applyLanguage(ui.lang.value));
  ui.keyToggle.addEventListener("click", toggleKeyPanel);
  ui.keyForm.addEventListener("submit", saveKey);
  ui.keyForget.addEventListener("click", forgetKey);
  ui.drop.addEventListener("click", () => ui.file.click());
  ui.drop.addEventListener("keydown", onDropZoneKey);
  ui.drop.addEventListener("keyup", onDropZoneKey);
  ui.drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    ui.drop.classList.add("dragging");
  });
  ui.drop.addEventListener("dragleave", () => ui.drop.classList.remove("dragging"));
  // Drops anywhere (the drop zone's bubble up here) select the file; this also keeps the
  // browser from navigating away to a photo dropped outside the zone.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", onDrop);
  document.addEventListener("paste", onPaste);
  ui.file.addEventListener("change", () => selectFile(ui.file.files[0]));
  ui.form.addEventListener("submit", submit);
  for (const button of ui.modeButtons) {
    button.addEventListener("click", () => setMode(button.dataset.mode));
  }
  ui.reset.addEventListener("click", () => state.viewer?.resetView());
  ui.fullscreen.addEventListener("click", toggleFullscreen);
  document.addEventListener("fullscreenchange", labelFullscreen);
  ui.quality.addEventListener("change", () => {
    try {
      localStorage.setItem(QUALITY_STORAGE, ui.quality.value);
    } catch {
      // not remembered
    }
    state.viewer?.setQuality(ui.quality.value).catch(showError);
  });
  ui.historyRefresh.addEventListener("click", () => refreshHistory());
}

async function start() {
  bind();
  applyLanguage(initialLanguage());
  try {
    ui.quality.value = localStorage.getItem(QUALITY_STORAGE) || "full";
  } catch {
    ui.quality.value = "full";
  }
  await loadInfo();
  const params = new URLSearchParams(location.search);
  const scene = params.get("scene");
  const job = params.get("job");
  if (scene) {
    // A scene file by URL (same origin only, by the page's Content-Security-Policy):
    // ?scene=/path/file.ply[&format=ply][&frame=opencv|opengl][&fov=degrees&aspect=w/h]
    const format = params.get("format") || scene.split("?")[0].split(".").pop().toLowerCase();
    const fov = Number(params.get("fov")) || undefined;
    const aspect = Number(params.get("aspect")) || undefined;
    const camera = async () => {
      if (fov) return { vfov: fov, aspect };
      if (format.startsWith("ply")) return (await plyCamera(scene).catch(() => null)) || {};
      return {};
    };
    const frame = params.get("frame") || frameOf(format);
    showScene(scene, format, camera, frame).catch(showError);
  } else if (job) {
    openJob(job);
  }
}

start();
