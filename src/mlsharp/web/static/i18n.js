// UI text in English and Simplified Chinese. Elements carry data-i18n="key" (their text)
// and data-i18n-attr="attribute:key;..." (attributes); code calls t(key, params).

const STORAGE_KEY = "mlsharp.lang";

export const LANGUAGES = ["en", "zh-CN"];

const STRINGS = {
  en: {
    title: "MLSharp 3D Maker",
    skipToViewer: "Skip to the 3D viewer",
    language: "Language",
    apiKey: "API key",
    apiKeyHelp: "This server asks for an API key. It is kept in this browser only.",
    apiKeyNeeded: "This server needs an API key: enter it above, then try again.",
    apiKeyWrong: "The API key was refused: check it above.",
    apiKeySaved: "API key saved.",
    apiKeyForgotten: "API key removed from this browser.",
    save: "Save",
    forget: "Forget",
    uploadHeading: "1. Choose a photo",
    dropHint: "Drop a photo here, paste it, or press to choose a file",
    dropFormats: "JPEG, PNG, WebP, HEIC, TIFF, BMP",
    focal: "Focal length (35 mm equivalent, optional)",
    focalHelp: "Leave empty to use the photo's EXIF data (or 30 mm).",
    panorama: "360° panorama",
    panoramaHelp:
      "A 2:1 equirectangular photo (or a 4:3 cube-map cross) becomes one scene around you. " +
      "Ticked by itself for 2:1 photos.",
    formats: "Output formats",
    detail: "Detail",
    detailAll: "All splats (as predicted)",
    detailSplats: "{count} splats",
    detailHelp: "Fewer splats: smaller files, faster on phones and headsets.",
    submit: "Make it 3D",
    selected: "Selected: {name} ({size})",
    uploading: "Uploading {name}…",
    viewerHeading: "2. Look around",
    viewerEmpty: "Your 3D scene appears here.",
    viewerTools: "Viewer tools",
    controls: "Controls",
    orbit: "Orbit",
    fly: "Fly",
    resetView: "Reset view",
    fullscreen: "Fullscreen",
    exitFullscreen: "Exit fullscreen",
    viewerLabel: "3D scene viewer",
    quality: "Quality",
    qualityFull: "Full",
    qualityLight: "Light (weak GPUs)",
    controlsHelp:
      "Orbit: drag to turn, right-drag or two fingers to move, wheel or pinch to zoom. " +
      "Fly: drag to look, W A S D to move.",
    keysHelp:
      "Keyboard: Tab to the view, then arrow keys turn (Shift + arrows move), + and − zoom, " +
      "Home resets; in Fly mode W A S D move, Q and E go down and up, arrow keys look.",
    downloads: "Download",
    downloadAs: "Download {format}",
    downloadsCount: "{count} splats",
    historyHeading: "Recent jobs",
    historyEmpty: "No jobs yet.",
    previewAlt: "Preview of {name}",
    refresh: "Refresh",
    open: "Open",
    follow: "Follow",
    footer: "Runs Apple's SHARP model on this server. Viewer: Spark and three.js (MIT).",
    apiDocs: "API documentation",
    "stage.queued": "Waiting in the queue",
    "stage.decode": "Reading the photo",
    "stage.preprocess": "Preparing the image",
    "stage.inference": "Running the network",
    "stage.postprocess": "Building the 3D Gaussians",
    "stage.write": "Writing the files",
    "stage.done": "Done",
    "stage.failed": "Failed",
    "stage.canceled": "Canceled",
    "stage.views": "Cutting the panorama into views",
    "stage.view": "Running the network on view {index} of {total}",
    "stage.merge": "Merging the views",
    "status.queued": "queued",
    "status.running": "running",
    "status.succeeded": "done",
    "status.failed": "failed",
    "status.canceled": "canceled",
    progress: "{stage} — {percent}%",
    downloadingScene: "Downloading the 3D scene… {percent}",
    preparingViewer: "Preparing the viewer…",
    sceneReady: "{count} splats. Drag to look around.",
    panoramaReady: "{count} splats around you. Drag to look around, W A S D to walk.",
    reconnecting: "Connection lost; reconnecting…",
    "error.title": "Something went wrong",
    "error.network": "Cannot reach the server. Check your connection and try again.",
    "error.unauthorized": "An API key is required.",
    "error.forbidden": "The API key is not valid.",
    "error.invalid_image": "This file is not a photo the server can read.",
    "error.empty_file": "The file is empty.",
    "error.image_too_large": "The photo is too large.",
    "error.not_a_panorama": "This photo is not a 360° panorama (it must be 2:1 equirectangular).",
    "error.payload_too_large": "The file is too large for this server.",
    "error.queue_full": "The server is busy. Try again in a minute.",
    "error.queue_full.retry": "The server is busy. Try again in {seconds} s.",
    "error.rate_limited": "Too many requests. Wait a moment and try again.",
    "error.rate_limited.retry": "Too many requests. Try again in {seconds} s.",
    "error.service_unavailable": "The server cannot reach a service it needs. Try again soon.",
    "error.service_unavailable.retry":
      "The server cannot reach a service it needs. Try again in {seconds} s.",
    "error.validation_error": "The server did not accept the request.",
    "error.bad_request": "The server did not accept the request.",
    "error.invalid_format": "The server does not offer this output format.",
    "error.not_found": "Not found (it may have expired or been deleted).",
    "error.job_not_found": "The job was not found (it may have expired or been deleted).",
    "error.file_not_found": "The file is no longer on the server (it may have expired).",
    "error.conflict": "The result is not available.",
    "error.internal_error": "The server failed unexpectedly. Try again; if it persists, report it.",
    "error.http_error": "The server answered with an error.",
    "error.out_of_memory": "The server ran out of memory for this photo.",
    "error.device_unavailable": "The server's compute device is not available.",
    "error.timeout": "The server did not finish in time.",
    "error.job_timeout": "The job took too long and was stopped.",
    "error.too_many_attempts": "The job failed on several workers and was given up.",
    "error.checkpoint_error": "The server's model weights cannot be used.",
    "error.checkpoint_not_found": "The server has no model weights.",
    "error.download_failed": "The server could not download the model weights.",
    "error.invalid_config": "The server is misconfigured for this request.",
    "error.output_exists": "The output file already exists.",
    "error.invalid_scene": "The scene is not valid.",
    "error.invalid_ply": "The .ply file is not valid.",
    "error.depth_unavailable": "This scene has no depth map.",
    "error.unsupported_media_type": "The server does not accept this kind of upload.",
    "error.method_not_allowed": "The server does not allow this request.",
    "error.not_acceptable": "The server cannot answer in a form this page reads.",
    "error.invalid_range": "The download range was malformed.",
    "error.range_not_satisfiable": "The download range is outside the file.",
    "error.too_many_files": "Too many files in one batch.",
    "error.output_error": "The server could not write the result files.",
    "error.storage_error": "The server cannot use its storage. Try again later.",
    "error.storage_full": "The server's disk is full. Try again later.",
    "error.too_many_webhooks": "This key has the most webhooks allowed; delete one first.",
    "error.corrupt_database": "The server's database is damaged. Tell its operator.",
    "error.corrupt_record": "The server's record of this job is damaged. Please submit it again.",
    "error.non_finite_output": "The model produced invalid values for this photo; nothing was saved.",
    "error.request_timeout": "The upload was too slow and timed out. Try again.",
    "error.queue_message_dead": "The job was lost by the queue and could not be run. Please submit it again.",
    "error.empty_batch": "The batch holds no images.",
    "error.invalid_zip": "The zip file is corrupt.",
    "error.invalid_idempotency_key": "The request's idempotency key is not valid.",
    "error.idempotency_key_reused": "The idempotency key was already used for another request.",
    "error.invalid_event": "Unknown webhook event.",
    "error.webhook_url_refused": "The webhook URL was refused.",
    "error.job_failed": "The job failed.",
    "error.job_canceled": "The job was canceled.",
    "error.job_deleted": "The job was deleted.",
    "error.file_too_large": "The file is {size}; this server accepts at most {limit}.",
    "error.no_file": "Choose a photo first.",
    "error.webgl": "This browser cannot show 3D scenes (WebGL 2 is not available).",
    "error.viewer": "The 3D viewer could not show this scene.",
    "error.no_viewable": "This job has no format the viewer can show ({formats}).",
    "error.http": "The server answered with an error (HTTP {status}).",
  },
  "zh-CN": {
    title: "MLSharp 3D 生成器",
    skipToViewer: "跳到 3D 查看器",
    language: "语言",
    apiKey: "API 密钥",
    apiKeyHelp: "此服务器需要 API 密钥。密钥只保存在本浏览器中。",
    apiKeyNeeded: "此服务器需要 API 密钥：请在上方输入后重试。",
    apiKeyWrong: "API 密钥被拒绝：请检查上方的密钥。",
    apiKeySaved: "API 密钥已保存。",
    apiKeyForgotten: "已从本浏览器删除 API 密钥。",
    save: "保存",
    forget: "删除",
    uploadHeading: "1. 选择照片",
    dropHint: "将照片拖到这里、粘贴，或点击选择文件",
    dropFormats: "JPEG、PNG、WebP、HEIC、TIFF、BMP",
    focal: "焦距（35 毫米等效，可选）",
    focalHelp: "留空则使用照片的 EXIF 信息（或 30 毫米）。",
    panorama: "360° 全景图",
    panoramaHelp: "2:1 的等距柱状全景照片（或 4:3 的立方体贴图十字布局）会生成环绕你的完整场景。2:1 的照片会自动勾选。",
    formats: "输出格式",
    detail: "细节",
    detailAll: "全部高斯点（模型输出）",
    detailSplats: "{count} 个高斯点",
    detailHelp: "高斯点越少，文件越小，在手机和头显上越流畅。",
    submit: "生成 3D",
    selected: "已选择：{name}（{size}）",
    uploading: "正在上传 {name}…",
    viewerHeading: "2. 四处看看",
    viewerEmpty: "3D 场景将显示在这里。",
    viewerTools: "查看器工具",
    controls: "操作方式",
    orbit: "环绕",
    fly: "飞行",
    resetView: "重置视角",
    fullscreen: "全屏",
    exitFullscreen: "退出全屏",
    viewerLabel: "3D 场景查看器",
    quality: "画质",
    qualityFull: "完整",
    qualityLight: "精简（低性能显卡）",
    controlsHelp:
      "环绕：拖动旋转，右键拖动或双指移动，滚轮或双指缩放。" + "飞行：拖动改变视线，W A S D 移动。",
    keysHelp:
      "键盘：按 Tab 键聚焦到画面，方向键旋转（Shift + 方向键平移），+ 和 − 缩放，Home 键复位；" +
      "飞行模式下 W A S D 移动，Q 和 E 下降和上升，方向键改变视线。",
    downloads: "下载",
    downloadAs: "下载 {format}",
    downloadsCount: "{count} 个高斯点",
    historyHeading: "最近的任务",
    historyEmpty: "还没有任务。",
    previewAlt: "{name} 的预览图",
    refresh: "刷新",
    open: "打开",
    follow: "查看进度",
    footer: "在此服务器上运行 Apple 的 SHARP 模型。查看器：Spark 与 three.js（MIT）。",
    apiDocs: "API 文档",
    "stage.queued": "排队等待中",
    "stage.decode": "读取照片",
    "stage.preprocess": "准备图像",
    "stage.inference": "运行神经网络",
    "stage.postprocess": "生成 3D 高斯",
    "stage.write": "写入文件",
    "stage.done": "完成",
    "stage.failed": "失败",
    "stage.canceled": "已取消",
    "stage.views": "将全景图切分为多个视角",
    "stage.view": "正在处理第 {index} 个视角（共 {total} 个）",
    "stage.merge": "合并各视角",
    "status.queued": "排队中",
    "status.running": "处理中",
    "status.succeeded": "完成",
    "status.failed": "失败",
    "status.canceled": "已取消",
    progress: "{stage} — {percent}%",
    downloadingScene: "正在下载 3D 场景… {percent}",
    preparingViewer: "正在准备查看器…",
    sceneReady: "共 {count} 个高斯点。拖动即可四处查看。",
    panoramaReady: "共 {count} 个高斯点环绕着你。拖动环顾四周，W A S D 行走。",
    reconnecting: "连接中断，正在重新连接…",
    "error.title": "出错了",
    "error.network": "无法连接服务器。请检查网络后重试。",
    "error.unauthorized": "需要 API 密钥。",
    "error.forbidden": "API 密钥无效。",
    "error.invalid_image": "服务器无法读取此文件，它不是受支持的照片。",
    "error.empty_file": "文件是空的。",
    "error.image_too_large": "照片太大。",
    "error.not_a_panorama": "这张照片不是 360° 全景图（须为 2:1 的等距柱状投影）。",
    "error.payload_too_large": "文件超过了此服务器的大小限制。",
    "error.queue_full": "服务器繁忙，请一分钟后重试。",
    "error.queue_full.retry": "服务器繁忙，请在 {seconds} 秒后重试。",
    "error.rate_limited": "请求过于频繁，请稍后再试。",
    "error.rate_limited.retry": "请求过于频繁，请在 {seconds} 秒后重试。",
    "error.service_unavailable": "服务器无法连接所需的服务，请稍后重试。",
    "error.service_unavailable.retry": "服务器无法连接所需的服务，请在 {seconds} 秒后重试。",
    "error.validation_error": "服务器不接受此请求。",
    "error.bad_request": "服务器不接受此请求。",
    "error.invalid_format": "服务器不提供此输出格式。",
    "error.not_found": "未找到（可能已过期或被删除）。",
    "error.job_not_found": "找不到该任务（可能已过期或被删除）。",
    "error.file_not_found": "服务器上已没有该文件（可能已过期）。",
    "error.conflict": "结果不可用。",
    "error.internal_error": "服务器意外出错。请重试；如果问题持续，请报告。",
    "error.http_error": "服务器返回错误。",
    "error.out_of_memory": "服务器处理这张照片时内存不足。",
    "error.device_unavailable": "服务器的计算设备不可用。",
    "error.timeout": "服务器未能按时完成。",
    "error.job_timeout": "任务耗时过长，已被停止。",
    "error.too_many_attempts": "任务在多个工作节点上失败，已放弃。",
    "error.checkpoint_error": "服务器的模型权重无法使用。",
    "error.checkpoint_not_found": "服务器没有模型权重。",
    "error.download_failed": "服务器无法下载模型权重。",
    "error.invalid_config": "服务器的配置不适用于此请求。",
    "error.output_exists": "输出文件已存在。",
    "error.invalid_scene": "场景无效。",
    "error.invalid_ply": ".ply 文件无效。",
    "error.depth_unavailable": "此场景没有深度图。",
    "error.unsupported_media_type": "服务器不接受此类上传。",
    "error.method_not_allowed": "服务器不允许此请求。",
    "error.not_acceptable": "服务器无法以本页面可读的格式回答。",
    "error.invalid_range": "下载范围格式错误。",
    "error.range_not_satisfiable": "下载范围超出了文件。",
    "error.too_many_files": "一次批量提交的文件过多。",
    "error.output_error": "服务器无法写入结果文件。",
    "error.storage_error": "服务器无法使用其存储。请稍后重试。",
    "error.storage_full": "服务器磁盘已满。请稍后重试。",
    "error.too_many_webhooks": "此密钥的 webhook 数量已达上限；请先删除一个。",
    "error.corrupt_database": "服务器的数据库已损坏。请告知其管理员。",
    "error.corrupt_record": "服务器上该任务的记录已损坏。请重新提交。",
    "error.non_finite_output": "模型为这张照片生成了无效的数值，未保存任何结果。",
    "error.request_timeout": "上传太慢，已超时。请重试。",
    "error.queue_message_dead": "队列丢失了该任务，无法运行。请重新提交。",
    "error.empty_batch": "批量任务中没有图片。",
    "error.invalid_zip": "zip 文件已损坏。",
    "error.invalid_idempotency_key": "请求的幂等键无效。",
    "error.idempotency_key_reused": "该幂等键已被另一个请求使用。",
    "error.invalid_event": "未知的 webhook 事件。",
    "error.webhook_url_refused": "webhook 地址被拒绝。",
    "error.job_failed": "任务失败。",
    "error.job_canceled": "任务已取消。",
    "error.job_deleted": "任务已被删除。",
    "error.file_too_large": "文件大小为 {size}；此服务器最多接受 {limit}。",
    "error.no_file": "请先选择一张照片。",
    "error.webgl": "此浏览器无法显示 3D 场景（不支持 WebGL 2）。",
    "error.viewer": "3D 查看器无法显示此场景。",
    "error.no_viewable": "此任务没有查看器可显示的格式（{formats}）。",
    "error.http": "服务器返回错误（HTTP {status}）。",
  },
};

let current = "en";

/** The language to start with: the remembered choice, else the browser's. */
export function initialLanguage() {
  let stored = null;
  try {
    stored = localStorage.getItem(STORAGE_KEY);
  } catch {
    // storage can be disabled; fall back to the browser's language
  }
  if (LANGUAGES.includes(stored)) return stored;
  const preferred = navigator.languages?.length ? navigator.languages : [navigator.language];
  for (const lang of preferred) {
    if ((lang || "").toLowerCase().startsWith("zh")) return "zh-CN";
    if ((lang || "").toLowerCase().startsWith("en")) return "en";
  }
  return "en";
}

/** The current language code. */
export function language() {
  return current;
}

/** Switch language, remember it, and re-translate `root`. */
export function setLanguage(lang, root = document) {
  current = LANGUAGES.includes(lang) ? lang : "en";
  try {
    localStorage.setItem(STORAGE_KEY, current);
  } catch {
    // not remembered; still switched
  }
  document.documentElement.lang = current;
  translate(root);
}

/** The message keys of `lang` (for checks that every error code has a message). */
export function keys(lang) {
  return Object.keys(STRINGS[lang] || {});
}

/** Has the current language a string for `key`? */
export function has(key) {
  return key in STRINGS[current] || key in STRINGS.en;
}

/** The text of `key` in the current language, with {name} placeholders filled. */
export function t(key, params = {}) {
  const text = STRINGS[current][key] ?? STRINGS.en[key] ?? key;
  const fill = (match, name) => (name in params ? String(params[name]) : match);
  return text.replace(/\{(\w+)\}/g, fill);
}

/** Fill every data-i18n / data-i18n-attr element under `root`. */
export function translate(root = document) {
  for (const el of root.querySelectorAll("[data-i18n]")) {
    el.textContent = t(el.dataset.i18n);
  }
  for (const el of root.querySelectorAll("[data-i18n-attr]")) {
    for (const pair of el.dataset.i18nAttr.split(";")) {
      const [attr, key] = pair.split(":");
      if (attr && key) el.setAttribute(attr.trim(), t(key.trim()));
    }
  }
  document.title = t("title");
}
