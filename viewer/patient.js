// The patient's viewer: the series of one exam, an image at a time as the box renders it (JPEG), with scroll
// (wheel, arrows, swipe, slider), zoom (buttons, pinch, wheel with Ctrl; drag to move once zoomed) and window
// presets. No measurement.
// Words come with the page (server-side, French or English); this file has none of its own.

const root = document.getElementById('viewer');
const base = root.dataset.base;
const study = encodeURIComponent(root.dataset.study);
const image = document.getElementById('image');
const slider = document.getElementById('slider');
const counter = document.getElementById('counter');
const preset = document.getElementById('preset');
const list = document.getElementById('series-list');

const state = { instances: [], series: '', index: 0, zoom: 1, x: 0, y: 0 };

function tag(item, code) {
  const v = item[code];
  return v && v.Value && v.Value.length ? v.Value[0] : undefined;
}

async function json(url) {
  const resp = await fetch(url, { headers: { Accept: 'application/dicom+json' }, credentials: 'same-origin' });
  if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
  return resp.status === 204 ? [] : resp.json();
}

function show() {
  const uid = state.instances[state.index];
  if (!uid) return;
  const win = preset.value ? `?window=${encodeURIComponent(preset.value)}` : '';
  const url = `${base}/studies/${study}/series/${encodeURIComponent(state.series)}/instances/${encodeURIComponent(uid)}/rendered${win}`;
  image.onload = () => { document.body.dataset.state = 'ready'; };
  image.src = url;
  image.dataset.index = String(state.index);
  slider.value = String(state.index + 1);
  counter.textContent = `${state.index + 1} / ${state.instances.length}`;
  // The next image is asked for ahead: scrolling on a phone's network stays smooth.
  const next = state.instances[state.index + 1];
  if (next) new Image().src = url.replace(encodeURIComponent(uid), encodeURIComponent(next));
}

function go(delta) {
  const n = state.instances.length;
  if (!n) return;
  state.index = Math.min(n - 1, Math.max(0, state.index + delta));
  show();
}

function place() {
  image.style.transform = `translate(${state.x}px, ${state.y}px) scale(${state.zoom})`;
  image.dataset.zoom = state.zoom.toFixed(2);
}

function zoom(factor) {
  state.zoom = Math.min(8, Math.max(1, state.zoom * factor));
  if (state.zoom === 1) { state.x = 0; state.y = 0; }
  place();
}

// Once zoomed in, a drag (or one finger) moves the image; unzoomed, one finger goes through the images.
function pan(dx, dy) {
  state.x += dx;
  state.y += dy;
  place();
}

async function openSeries(uid, button) {
  for (const b of list.querySelectorAll('button')) b.setAttribute('aria-pressed', String(b === button));
  const rows = await json(`${base}/studies/${study}/series/${encodeURIComponent(uid)}/instances?includefield=00200013`);
  rows.sort((a, b) => (tag(a, '00200013') ?? 0) - (tag(b, '00200013') ?? 0));
  state.series = uid;
  state.instances = rows.map((r) => tag(r, '00080018')).filter(Boolean);
  state.index = Math.floor((state.instances.length - 1) / 2);
  slider.max = String(Math.max(1, state.instances.length));
  show();
}

async function start() {
  document.body.dataset.state = 'loading';
  const series = await json(`${base}/studies/${study}/series?includefield=0008103E&includefield=00201209`);
  series.sort((a, b) => (tag(a, '00200011') ?? 0) - (tag(b, '00200011') ?? 0));
  let first = null;
  for (const s of series) {
    const uid = tag(s, '0020000E');
    const li = document.createElement('li');
    const button = document.createElement('button');
    button.type = 'button';
    button.dataset.series = uid;
    button.textContent = [tag(s, '00080060'), tag(s, '0008103E')].filter(Boolean).join(' — ') || uid;
    button.addEventListener('click', () => openSeries(uid, button));
    li.append(button);
    list.append(li);
    if (!first) first = [uid, button];
  }
  if (first) await openSeries(...first);
}

image.addEventListener('keydown', (ev) => {
  if (ev.key === 'ArrowUp' || ev.key === 'ArrowLeft') { go(-1); ev.preventDefault(); }
  if (ev.key === 'ArrowDown' || ev.key === 'ArrowRight') { go(1); ev.preventDefault(); }
});
document.getElementById('frame').addEventListener('wheel', (ev) => {
  ev.preventDefault();
  if (ev.ctrlKey) zoom(ev.deltaY < 0 ? 1.1 : 1 / 1.1);
  else go(ev.deltaY > 0 ? 1 : -1);
}, { passive: false });
slider.addEventListener('input', () => { state.index = Number(slider.value) - 1; show(); });
preset.addEventListener('change', show);
document.getElementById('zoom-in').addEventListener('click', () => zoom(1.25));
document.getElementById('zoom-out').addEventListener('click', () => zoom(0.8));
document.getElementById('reset').addEventListener('click', () => { state.zoom = 1; zoom(1); preset.value = ''; show(); });
let drag = null;
image.addEventListener('mousedown', (ev) => { if (state.zoom > 1) { drag = { x: ev.clientX, y: ev.clientY }; ev.preventDefault(); } });
window.addEventListener('mousemove', (ev) => {
  if (!drag) return;
  pan(ev.clientX - drag.x, ev.clientY - drag.y);
  drag = { x: ev.clientX, y: ev.clientY };
});
window.addEventListener('mouseup', () => { drag = null; });

// Touch: one finger swipes through the images, two fingers pinch to zoom.
let touch = null;
const frame = document.getElementById('frame');
frame.addEventListener('touchstart', (ev) => {
  if (ev.touches.length === 2) {
    const [a, b] = ev.touches;
    touch = { pinch: Math.hypot(a.clientX - b.clientX, a.clientY - b.clientY), zoom: state.zoom };
  } else {
    touch = { x: ev.touches[0].clientX, y: ev.touches[0].clientY };
  }
}, { passive: true });
frame.addEventListener('touchmove', (ev) => {
  if (!touch) return;
  if (ev.touches.length === 2 && touch.pinch) {
    const [a, b] = ev.touches;
    state.zoom = touch.zoom;
    zoom(Math.hypot(a.clientX - b.clientX, a.clientY - b.clientY) / touch.pinch);
  } else if (touch.y !== undefined && state.zoom > 1) {
    pan(ev.touches[0].clientX - touch.x, ev.touches[0].clientY - touch.y);
    touch.x = ev.touches[0].clientX;
    touch.y = ev.touches[0].clientY;
  } else if (touch.y !== undefined) {
    const dy = ev.touches[0].clientY - touch.y;
    if (Math.abs(dy) > 24) { go(dy < 0 ? 1 : -1); touch.y = ev.touches[0].clientY; }
  }
}, { passive: true });
frame.addEventListener('touchend', () => { touch = null; });

start().catch((err) => {
  document.body.dataset.state = 'error';
  frame.dataset.error = root.dataset.error;
  console.error(err);
});
