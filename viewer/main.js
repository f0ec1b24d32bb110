// The viewer's page: reads its target from the URL, fills the banner and the series panel, shows a stack.
// Every text from the server goes in with textContent (never innerHTML): nothing it sends can run as markup.
import { Dicomweb, HttpError, personName, value } from './dicomweb.js';
import { Stack, applyWindow, defaultWindow } from './stack.js';

const $ = (id) => document.getElementById(id);
const BASES = ['/dicom-web', '/conso/dicom-web'];
const UID = /^[0-9]+(\.[0-9]+)*$/;

// fitted: the user has not zoomed or panned since the last fit, so a resize (rotating a tablet) fits again.
const view = { seriesUid: null, stack: null, index: 0, image: null, window: null, zoom: 1, panX: 0, panY: 0, fitted: true, tool: 'window', token: 0 };
const canvas = $('image');
const ctx = canvas.getContext('2d');
let offscreen = null; // the current image at its own size, after window/level
let frameRequest = null; // what the next animation frame does: 'paint' or 'render'

main().catch(fail);

async function main() {
  const params = new URLSearchParams(location.search);
  const kos = params.get('kos') || '';
  const base = params.get('base') || (kos ? '/conso/dicom-web' : '/dicom-web');
  let study = params.get('study') || '';
  if (!BASES.includes(base)) throw new Error('This address does not name a DICOMweb service of this box.');
  if (kos && !UID.test(kos)) throw new Error('The exam identifier (kos) is not valid.');
  if (!study && kos) study = await studyOfKos(kos);
  if (!UID.test(study)) throw new Error('The address does not name a study.');
  const api = new Dicomweb(base, study, kos);
  setupControls();
  // The series list (QIDO) and, only if the box holds it already, the whole study's metadata, side by side:
  // warm, the metadata opens the first series without waiting for the list; cold, it is a quick 504.
  const cached = api.studyMetadata(true);
  cached.catch(() => {});
  const listed = api.series().then((series) => series.sort(bySeriesNumber));
  listed.then((series) => showSeriesList(api, series), () => {});
  // The metadata is waited for even when the list comes first: a 504 is as quick as the list, and the metadata
  // saves the series' own request.
  const first = await cached.then((items) => {
    const uid = value([...items].sort(bySeriesNumber)[0], '0020000E');
    return uid ? { uid, items: items.filter((i) => value(i, '0020000E') === uid) } : Promise.reject(new Error('empty'));
  }).catch(() => listed.then((series) => ({ uid: value(series[0], '0020000E'), items: null })));
  if (!first.uid) throw new Error('This study has no images.');
  await openSeries(api, first.uid, first.items);
}

function bySeriesNumber(a, b) {
  return value(a, '00200011', 0) - value(b, '00200011', 0);
}

// Thumbnails wait for the first image: on a cold box each one joins a series retrieve, and every one takes a
// connection of the browser's six to this host away from the first frame.
function loadThumbnails(only = null) {
  for (const img of only ? [only] : document.querySelectorAll('#series-list img[data-src]')) {
    img.src = img.dataset.src;
    delete img.dataset.src;
  }
}

async function studyOfKos(kos) {
  const resp = await fetch(`/conso/api/exams/${encodeURIComponent(kos)}`, { credentials: 'same-origin' });
  if (!resp.ok) throw new HttpError(resp.status, resp.url);
  return (await resp.json()).study_uid || '';
}

function showSeriesList(api, series) {
  const list = $('series-list');
  for (const s of series) {
    const uid = value(s, '0020000E');
    const button = document.createElement('button');
    button.type = 'button';
    button.dataset.series = uid;
    button.setAttribute('aria-current', String(uid === view.seriesUid)); // the first series may be open already
    const img = document.createElement('img');
    img.alt = '';
    img.loading = 'lazy';
    img.dataset.src = api.thumbnailUrl(uid); // set once the first image is painted: loadThumbnails()
    if (performance.getEntriesByName('first-image').length || document.body.dataset.state === 'error') loadThumbnails(img);
    const label = document.createElement('span');
    const n = value(s, '00201209', '');
    label.textContent = `${value(s, '00080060', '')} ${value(s, '00200011', '')} ${value(s, '0008103E', '')}${n ? ` (${n})` : ''}`;
    button.append(img, label);
    button.addEventListener('click', () => openSeries(api, uid).catch(fail));
    const li = document.createElement('li');
    li.append(button);
    list.append(li);
  }
}

// Two requests race for the stack's order. Warm, the series' metadata is in the box's cache and wins. Cold, a Proxy
// box answers it 504 at once (only-if-cached: it would first have to retrieve the whole series from the PACS) and
// the QIDO instance list (a C-FIND) orders the stack: the current image then fetches its own metadata and frame,
// answered as soon as that one instance has arrived, and the series' metadata is asked only once that image is
// painted (a retrieve running alongside the C-FIND would slow it down several times).
async function openSeries(api, seriesUid, metadata = null) {
  const token = ++view.token;
  view.seriesUid = seriesUid;
  for (const b of document.querySelectorAll('#series-list button')) b.setAttribute('aria-current', String(b.dataset.series === seriesUid));
  document.body.dataset.state = 'loading';
  const abort = new AbortController();
  const cached = metadata ? Promise.resolve(metadata) : api.seriesMetadata(seriesUid, true);
  const listed = metadata ? Promise.reject(new Error('not needed')) : api.instances(seriesUid, abort.signal);
  cached.catch(() => {});
  listed.catch(() => {});
  const first = await Promise.any([
    cached.then((items) => ({ items, complete: true })),
    listed.then((items) => (items.length ? { items, complete: false } : Promise.reject(new Error('no instances')))),
  ]).catch(async () => ({ items: await api.seriesMetadata(seriesUid), complete: true })); // its error is the one to show
  if (first.complete) abort.abort(); // nothing left to learn from the instance list
  if (token !== view.token) return;
  if (!first.items.length) throw new Error('This series has no images.');
  const stack = new Stack(api, seriesUid, first.items, first.complete);
  if (first.complete) showBanner(first.items[0]);
  stack.onprogress = () => { if (stack === view.stack) showProgress(); };
  Object.assign(view, { stack, image: null, window: null });
  $('preset').value = '';
  $('slider').max = String(stack.length - 1);
  const shown = show(Math.floor((stack.length - 1) / 2));
  if (!first.complete) {
    // A box that ignored only-if-cached (everything local) has answered in full; else ask now, without it.
    // Not for a series the user has already left: that would retrieve all of it for nothing.
    const later = () => (stack !== view.stack ? Promise.reject(new Error('series left'))
      : cached.catch((error) => (error.status === 504 ? api.seriesMetadata(seriesUid) : Promise.reject(error))));
    shown.then(later, later).then((items) => {
      if (stack !== view.stack) return;
      const index = stack.complete(items, view.index);
      $('slider').max = String(stack.length - 1);
      if (index !== view.index) show(index).catch(fail); else showPosition();
      showProgress();
    }, () => {}); // the images still load one by one, each with its own metadata
  }
  await shown;
}

function showBanner(item) {
  $('patient').textContent = personName(item, '00100010') || '—';
  $('ins').textContent = maskIns(value(item, '00100020', ''));
  const d = value(item, '00080020', '');
  $('study-date').textContent = d.length === 8 ? `${d.slice(6)}/${d.slice(4, 6)}/${d.slice(0, 4)}` : '—';
  $('modality').textContent = value(item, '00080060', '—');
  $('description').textContent = value(item, '00081030', '—');
}

// Enough to recognise the patient on screen, not enough to copy the national identifier.
export function maskIns(ins) {
  if (ins.length < 6) return '•••';
  return ins.slice(0, 1) + '•'.repeat(ins.length - 4) + ins.slice(-3);
}

function showPosition() {
  $('slider').value = String(view.index);
  $('position').textContent = `${view.index + 1} / ${view.stack.length}`;
}

async function show(index) {
  const stack = view.stack;
  index = Math.max(0, Math.min(stack.length - 1, index));
  view.index = index;
  showPosition();
  const stage = $('stage');
  if (!stack.loaded.has(index)) stage.classList.add('busy');
  let image;
  try {
    image = await stack.image(index);
  } finally {
    stage.classList.remove('busy');
  }
  if (stack !== view.stack || index !== view.index) return; // the user has moved on meanwhile
  const first = view.image === null;
  view.image = image;
  if (first) showBanner(image.item);
  if (first || !view.window) view.window = image.kind === 'gray' ? defaultWindow(image) : null;
  if (first) fit();
  renderImage();
  document.body.dataset.state = 'ready';
  canvas.dataset.index = String(index);
  if (!performance.getEntriesByName('first-image').length) {
    performance.mark('first-image');
    loadThumbnails();
  }
  // Neighbours after the paint: before it, they would only compete with the first image.
  stack.preload(index);
}

// Window/level into an offscreen canvas at the image's size; the visible canvas then only scales it.
function renderImage() {
  const image = view.image;
  if (!image) return;
  if (!offscreen || offscreen.width !== image.width || offscreen.height !== image.height) {
    offscreen = new OffscreenCanvas(image.width, image.height);
  }
  const octx = offscreen.getContext('2d');
  const started = performance.now();
  if (image.kind === 'gray') {
    const out = octx.createImageData(image.width, image.height);
    applyWindow(image, view.window, out);
    octx.putImageData(out, 0, 0);
    $('wl').textContent = `W ${Math.round(view.window.width)} L ${Math.round(view.window.center)}`;
  } else {
    octx.drawImage(image.bitmap, 0, 0);
    $('wl').textContent = '';
  }
  paint();
  // Exposed for the tests and the perf suite: the time of the last window/level + paint, in ms.
  canvas.dataset.renderMs = (performance.now() - started).toFixed(1);
}

function paint() {
  const ratio = window.devicePixelRatio || 1;
  const w = Math.round(canvas.clientWidth * ratio), h = Math.round(canvas.clientHeight * ratio);
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.fillStyle = '#000';
  ctx.fillRect(0, 0, w, h);
  if (!offscreen || !view.image) return;
  const s = view.zoom * ratio;
  ctx.setTransform(s, 0, 0, s, w / 2 + view.panX * ratio, h / 2 + view.panY * ratio);
  ctx.imageSmoothingEnabled = view.zoom < 3;
  ctx.drawImage(offscreen, -view.image.width / 2, -view.image.height / 2);
}

// Many input events per frame collapse into one paint; a render (window/level, then paint) covers a paint.
function schedule(work) {
  const wanted = work === renderImage ? 'render' : 'paint';
  if (frameRequest) {
    if (wanted === 'render') frameRequest = 'render';
    return;
  }
  frameRequest = wanted;
  requestAnimationFrame(() => {
    const what = frameRequest;
    frameRequest = null;
    if (what === 'render') renderImage(); else paint();
  });
}

function fit() {
  if (!view.image) return;
  view.zoom = Math.min(canvas.clientWidth / view.image.width, canvas.clientHeight / view.image.height);
  view.panX = view.panY = 0;
  view.fitted = true;
  schedule(paint);
}

function reset() {
  if (view.image?.kind === 'gray') view.window = defaultWindow(view.image);
  $('preset').value = '';
  fit();
  schedule(renderImage);
}

function setWindow(center, width) {
  if (view.image?.kind !== 'gray') return;
  view.window = { center, width: Math.max(1, width) };
  schedule(renderImage);
}

function zoomBy(factor) {
  view.zoom *= factor;
  view.fitted = false;
  schedule(paint);
}

function setTool(tool) {
  view.tool = tool;
  for (const b of document.querySelectorAll('[data-tool]')) b.setAttribute('aria-pressed', String(b.dataset.tool === tool));
}

function scrollBy(step) {
  if (view.stack) show(view.index + step).catch(fail);
}

function setupControls() {
  for (const b of document.querySelectorAll('[data-tool]')) b.addEventListener('click', () => setTool(b.dataset.tool));
  $('fit').addEventListener('click', fit);
  $('reset').addEventListener('click', reset);
  $('preset').addEventListener('change', (e) => {
    if (!e.target.value) return reset();
    const [c, w] = e.target.value.split(',').map(Number);
    setWindow(c, w);
  });
  $('slider').addEventListener('input', (e) => scrollBy(Number(e.target.value) - view.index));
  canvas.addEventListener('wheel', (e) => { e.preventDefault(); scrollBy(Math.sign(e.deltaY)); }, { passive: false });
  let drag = null;
  canvas.addEventListener('pointerdown', (e) => {
    canvas.focus();
    canvas.setPointerCapture(e.pointerId);
    drag = { x: e.clientX, y: e.clientY, window: view.window, zoom: view.zoom, panX: view.panX, panY: view.panY };
  });
  canvas.addEventListener('pointermove', (e) => {
    if (!drag) return;
    const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (view.tool === 'window' && drag.window) {
      // Right widens the window, down raises the level: the usual radiology convention.
      setWindow(drag.window.center + dy * drag.window.width / 256, drag.window.width + dx * drag.window.width / 128);
    } else if (view.tool === 'pan') {
      view.panX = drag.panX + dx; view.panY = drag.panY + dy; view.fitted = false; schedule(paint);
    } else if (view.tool === 'zoom') {
      view.zoom = Math.max(0.05, drag.zoom * Math.exp(-dy / 200)); view.fitted = false; schedule(paint);
    }
  });
  const end = () => { drag = null; };
  canvas.addEventListener('pointerup', end);
  canvas.addEventListener('pointercancel', end);
  document.addEventListener('keydown', (e) => {
    if (e.target instanceof HTMLInputElement || e.target instanceof HTMLSelectElement) return;
    const keys = {
      ArrowUp: () => scrollBy(-1), ArrowDown: () => scrollBy(1), PageUp: () => scrollBy(-10), PageDown: () => scrollBy(10),
      Home: () => scrollBy(-view.index), End: () => scrollBy(Infinity),
      '+': () => zoomBy(1.2), '-': () => zoomBy(1 / 1.2),
      f: fit, r: reset, w: () => setTool('window'), p: () => setTool('pan'), z: () => setTool('zoom'),
    };
    const action = keys[e.key];
    if (action && !e.ctrlKey && !e.metaKey && !e.altKey) { e.preventDefault(); action(); }
  });
  new ResizeObserver(() => (view.fitted ? fit() : schedule(paint))).observe($('stage'));
}

function showProgress() {
  const { stack } = view;
  const bar = $('progress');
  bar.max = stack.length;
  bar.value = stack.loaded.size;
  bar.title = `${bar.value} of ${stack.length} images loaded`;
}

function fail(error) {
  if (error instanceof HttpError && error.status === 401) {
    // Not logged in (or the session ended): log in, then come back to this very view.
    location.assign(`/auth/login?next=${encodeURIComponent(location.pathname + location.search)}`);
    return;
  }
  const messages = {
    403: 'You are not allowed to see these images. Open this exam from the link in its report, or from your DRIMbox exam list.',
    404: 'These images were not found: the exam may have been withdrawn or is not available on this box.',
    410: 'This exam has been withdrawn.',
    503: 'The images are not available right now (the image source cannot be reached). Try again later.',
  };
  const text = error instanceof HttpError
    ? messages[error.status] || `The images could not be loaded (error ${error.status}).`
    : error.message || String(error);
  const box = $('message');
  box.textContent = text;
  box.hidden = false;
  document.body.dataset.state = 'error';
  loadThumbnails(); // the other series may still be worth a look
}
