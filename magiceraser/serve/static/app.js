// MagicEraser page: load a photo, paint or click a mask, erase through POST /api/erase, compare.
// Plain browser JavaScript (no build step). The mask lives in a canvas at the photo's own
// resolution, so the uploaded mask always has the image's size whatever the display size.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  file: null,          // the photo as uploaded (sent unchanged)
  width: 0, height: 0,
  tool: "brush",
  drawing: false, last: null,
  segMap: null,        // Int32Array h*w: thing segment id per pixel (0: none)
  segments: new Map(), // id -> segment JSON from /api/segment
  highlight: new Map(),// id -> ImageData of its highlight
  hoverId: 0,
  health: null,
  objectUrls: [],
};

const imageCanvas = $("image-canvas"), maskCanvas = $("mask-canvas"), hoverCanvas = $("hover-canvas");
const maskCtx = maskCanvas.getContext("2d", { willReadFrequently: true });
const hoverCtx = hoverCanvas.getContext("2d");
const MASK_RGB = [255, 0, 90];

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function setBusy(busy, text) {
  $("erase").disabled = busy || !state.file;
  $("progress").hidden = !busy;
  $("progress-text").textContent = text || "";
}

async function loadHealth() {
  try {
    const r = await fetch("/healthz");
    const h = await r.json();
    state.health = h;
    const d = h.defaults;
    $("steps").placeholder = d.steps; $("steps").max = h.max_steps;
    $("strength").placeholder = d.strength;
    $("seed").placeholder = d.seed;
    $("refocus").checked = !!d.refocus;
    $("status").textContent = `ready (v${h.version}${h.segmenter ? ", segmenter on" : ", no segmenter"})`;
    if (!h.segmenter) { $("tool-select").disabled = true; $("classes").disabled = true; }
  } catch (e) {
    $("status").textContent = "service not reachable";
  }
}

// ------------------------------------------------------------------ loading a photo
async function loadFile(file) {
  showError("");
  if (!file || !file.type.startsWith("image/")) {
    showError("Choose an image file (PNG, JPEG, WebP…).");
    return;
  }
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch (e) {
    showError("This file could not be decoded as an image.");
    return;
  }
  state.file = file;
  state.width = bitmap.width; state.height = bitmap.height;
  for (const c of [imageCanvas, maskCanvas, hoverCanvas]) { c.width = bitmap.width; c.height = bitmap.height; }
  imageCanvas.getContext("2d").drawImage(bitmap, 0, 0);
  maskCtx.clearRect(0, 0, state.width, state.height);
  hoverCtx.clearRect(0, 0, state.width, state.height);
  $("drop").hidden = true;
  $("editor").hidden = false;
  $("result-section").hidden = true;
  setBusy(false);
  loadSegments();
}

async function loadSegments() {
  state.segMap = null; state.segments.clear(); state.highlight.clear(); state.hoverId = 0;
  if (!state.health || !state.health.segmenter) return;
  $("segments-info").textContent = "finding objects…";
  const body = new FormData();
  body.append("image", state.file);
  try {
    const r = await fetch("/api/segment", { method: "POST", body });
    const data = await r.json();
    if (!r.ok) { $("segments-info").textContent = ""; showError(errorText(r.status, data)); return; }
    const map = new Int32Array(state.width * state.height);
    let things = 0;
    for (const seg of data.segments) {
      if (!seg.is_thing) continue;
      things++;
      state.segments.set(seg.id, seg);
      let pos = 0, value = false;
      for (const run of seg.rle.counts) {
        if (value) map.fill(seg.id, pos, pos + run);
        pos += run; value = !value;
      }
    }
    state.segMap = map;
    $("segments-info").textContent = things ? `${things} object(s): use Select object and click one` : "no objects found: paint a mask";
    document.body.dataset.segmentsReady = "1";
  } catch (e) {
    $("segments-info").textContent = "";
  }
}

// ------------------------------------------------------------------ tools
function canvasPoint(ev) {
  const r = hoverCanvas.getBoundingClientRect();
  return {
    x: (ev.clientX - r.left) * (state.width / r.width),
    y: (ev.clientY - r.top) * (state.height / r.height),
    scale: state.width / r.width,
  };
}

function stroke(from, to) {
  maskCtx.save();
  maskCtx.globalCompositeOperation = state.tool === "eraser" ? "destination-out" : "source-over";
  maskCtx.strokeStyle = maskCtx.fillStyle = `rgb(${MASK_RGB.join(",")})`;
  maskCtx.lineCap = maskCtx.lineJoin = "round";
  maskCtx.lineWidth = Number($("brush-size").value) * to.scale;
  maskCtx.beginPath();
  maskCtx.moveTo(from.x, from.y);
  maskCtx.lineTo(to.x + 0.01, to.y);
  maskCtx.stroke();
  maskCtx.restore();
}

function segmentAt(p) {
  if (!state.segMap) return 0;
  const x = Math.floor(p.x), y = Math.floor(p.y);
  if (x < 0 || y < 0 || x >= state.width || y >= state.height) return 0;
  return state.segMap[y * state.width + x];
}

function highlightOf(id) {
  if (!state.highlight.has(id)) {
    const img = hoverCtx.createImageData(state.width, state.height);
    const map = state.segMap;
    for (let i = 0; i < map.length; i++) {
      if (map[i] === id) { img.data[4 * i] = 40; img.data[4 * i + 1] = 200; img.data[4 * i + 2] = 255; img.data[4 * i + 3] = 120; }
    }
    state.highlight.set(id, img);
  }
  return state.highlight.get(id);
}

function showHover(id) {
  if (id === state.hoverId) return;
  state.hoverId = id;
  hoverCtx.clearRect(0, 0, state.width, state.height);
  if (id) {
    hoverCtx.putImageData(highlightOf(id), 0, 0);
    const seg = state.segments.get(id);
    hoverCanvas.title = seg ? `${seg.class} (${seg.area} px)` : "";
  } else {
    hoverCanvas.title = "";
  }
}

function addSegmentToMask(id) {
  const img = maskCtx.getImageData(0, 0, state.width, state.height);
  const map = state.segMap;
  for (let i = 0; i < map.length; i++) {
    if (map[i] === id) { img.data[4 * i] = MASK_RGB[0]; img.data[4 * i + 1] = MASK_RGB[1]; img.data[4 * i + 2] = MASK_RGB[2]; img.data[4 * i + 3] = 255; }
  }
  maskCtx.putImageData(img, 0, 0);
}

hoverCanvas.addEventListener("pointerdown", (ev) => {
  if (!state.file) return;
  const p = canvasPoint(ev);
  if (state.tool === "select") {
    const id = segmentAt(p);
    if (id) addSegmentToMask(id);
    return;
  }
  hoverCanvas.setPointerCapture(ev.pointerId);
  state.drawing = true; state.last = p;
  stroke(p, p);
});
hoverCanvas.addEventListener("pointermove", (ev) => {
  if (!state.file) return;
  const p = canvasPoint(ev);
  if (state.tool === "select") { showHover(segmentAt(p)); return; }
  if (!state.drawing) return;
  stroke(state.last, p);
  state.last = p;
});
for (const type of ["pointerup", "pointercancel"]) {
  hoverCanvas.addEventListener(type, () => { state.drawing = false; state.last = null; });
}
hoverCanvas.addEventListener("pointerleave", () => { if (state.tool === "select") showHover(0); });

for (const b of document.querySelectorAll(".tool")) {
  b.addEventListener("click", () => {
    state.tool = b.dataset.tool;
    for (const o of document.querySelectorAll(".tool")) o.classList.toggle("active", o === b);
    showHover(0);
  });
}
$("clear-mask").addEventListener("click", () => maskCtx.clearRect(0, 0, state.width, state.height));

// ------------------------------------------------------------------ drop / choose
const drop = $("drop");
drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (ev) => { ev.preventDefault(); drop.classList.remove("over"); loadFile(ev.dataTransfer.files[0]); });
$("file").addEventListener("change", (ev) => loadFile(ev.target.files[0]));

// ------------------------------------------------------------------ erase
function maskBlob() {
  // White where painted, black elsewhere: the API's mask convention.
  const src = maskCtx.getImageData(0, 0, state.width, state.height);
  const out = new ImageData(state.width, state.height);
  for (let i = 0; i < src.data.length; i += 4) {
    const v = src.data[i + 3] > 0 ? 255 : 0;
    out.data[i] = out.data[i + 1] = out.data[i + 2] = v; out.data[i + 3] = 255;
  }
  const c = document.createElement("canvas");
  c.width = state.width; c.height = state.height;
  c.getContext("2d").putImageData(out, 0, 0);
  return new Promise((resolve) => c.toBlob(resolve, "image/png"));
}

function errorText(status, data) {
  if (data && data.error) return `${status}: ${data.field ? data.field + ": " : ""}${data.error}`;
  return `${status}: the request failed`;
}

function send(body) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/erase");
    xhr.responseType = "blob";
    const started = performance.now();
    let timer = null;
    xhr.upload.onprogress = (ev) => {
      if (ev.lengthComputable) { $("progress").max = ev.total; $("progress").value = ev.loaded; $("progress-text").textContent = `uploading ${Math.round(100 * ev.loaded / ev.total)}%`; }
    };
    xhr.upload.onload = () => {
      $("progress").removeAttribute("value");  // indeterminate while the eraser runs
      timer = setInterval(() => { $("progress-text").textContent = `erasing… ${((performance.now() - started) / 1000).toFixed(1)} s`; }, 100);
    };
    xhr.onloadend = () => { clearInterval(timer); resolve(xhr); };
    xhr.send(body);
  });
}

$("params").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  if (!state.file) return;
  showError("");
  const body = new FormData();
  body.append("image", state.file);
  const classes = $("classes").value.trim();
  if (classes) body.append("classes", classes);
  else body.append("mask", await maskBlob(), "mask.png");
  for (const name of ["steps", "strength", "seed", "tag", "prompt"]) {
    const v = $(name).value.trim();
    if (v) body.append(name, v);
  }
  body.append("refocus", $("refocus").checked ? "true" : "false");
  setBusy(true, "uploading");
  const xhr = await send(body);
  setBusy(false);
  if (xhr.status === 200) { showResult(xhr); return; }
  let data = null;
  try { data = JSON.parse(await xhr.response.text()); } catch (e) { /* not JSON */ }
  if (xhr.status === 0) { showError("The service could not be reached."); return; }
  const retry = xhr.getResponseHeader("Retry-After");
  showError(errorText(xhr.status, data) + (retry ? ` (retry in ${retry} s)` : ""));
});

function showResult(xhr) {
  for (const u of state.objectUrls) URL.revokeObjectURL(u);
  const before = URL.createObjectURL(state.file), after = URL.createObjectURL(xhr.response);
  state.objectUrls = [before, after];
  $("before").src = before;
  $("result").src = after;
  $("download").href = after;
  const prompt = decodeURIComponent(xhr.getResponseHeader("X-Erase-Prompt") || "");
  const secs = xhr.getResponseHeader("X-Erase-Seconds");
  const segs = JSON.parse(xhr.getResponseHeader("X-Erase-Segments") || "[]");
  $("result-info").textContent = `${secs} s · prompt “${prompt}”` + (segs.length ? ` · erased ${segs.map((s) => s.class).join(", ")}` : "");
  $("result-section").hidden = false;
}

$("compare-slider").addEventListener("input", (ev) => $("compare").style.setProperty("--pos", `${ev.target.value}%`));

loadHealth();
