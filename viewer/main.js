// The viewer's page: reads its target from the URL, fills the banner and the series panel, shows a stack.
// Every text from the server goes in with textContent (never innerHTML): nothing it sends can run as markup.
import { Dicomweb, HttpError, maskIns, personName, value } from './dicomweb.js';
import { warmUp } from './codecs.js';
import { LinkMeter } from './link.js';
import { Stack, applyWindow, defaultWindow } from './stack.js';

const $ = (id) => document.getElementById(id);
const BASES = ['/dicom-web', '/conso/dicom-web'];
const UID = /^[0-9]+(\.[0-9]+)*$/;
// An error a person reads: its message is a catalogue key (the words may not have arrived when it is thrown).
const problem = (key) => Object.assign(new Error(key), { key });

// fitted: the user has not zoomed or panned since the last fit, so a resize (rotating a tablet) fits again.
// measures: frame key → that image's measurements ({kind, points: [{x, y}] in image pixels, done}).
const view = { seriesUid: null, stack: null, index: 0, image: null, window: null, zoom: 1, panX: 0, panY: 0, fitted: true, tool: 'window', token: 0, measures: new Map(), cine: null, preview: null, painted: false, series: new Map() };
const canvas = $('image'); // the overlay: measurements and previews drawn at the screen's resolution; the pointer
const ctx = canvas.getContext('2d');
const pixels = $('pixels'); // the current image at its own size, after window/level: the compositor scales it
const pctx = pixels.getContext('2d');
let windowed = null; // the ImageData window/level writes into (renderImage)
let overlayDrawn = false; // whether the overlay holds anything to clear
let stageSize = null; // {width, height} of the stage in CSS pixels, kept by a ResizeObserver
let frameRequest = null; // what the next animation frame does: 'paint' or 'render'

main().catch(fail);

// What the first image does not need loads after it is painted (the first image: issue 5): the words, the
// measurement and tag-panel modules. A measurement click in the few ms before they are in does nothing.
let extras = null; // { measure, panels } once loaded
let i18n = null; // the words' module, once loaded: until then the page's own (French) text stays
const t = (key, params) => (i18n ? i18n.t(key, params) : '');
let later = null;
function loadLater() {
  later ||= Promise.all([
    import('./i18n.js').then((module) => { i18n = module; return module.loadWords(); })
      .then(() => { if (view.image) showBanner(view.image.item); }), // its date as this language writes it
    Promise.all([import('./measure.js'), import('./panels.js')]).then(([measure, panels]) => { extras = { measure, panels }; }),
  ]).then(() => { showReadouts(); showMeasurements(); if (!$('tags').hidden && view.image) extras.panels.fillTags(view.image.item); });
  later.then(offerComparison).catch(() => {}); // no comparison offered is not an error of this exam
  return later;
}

const EMBEDDED = new URLSearchParams(location.search).get('embedded') === '1';
if (EMBEDDED) document.body.dataset.embedded = '1';

// Comparison: only from the consumer's list (the KOS is known, so is the patient's list of exams). On the source
// box a report link grants its own study only: nothing to compare with, no button.
async function offerComparison() {
  if (!view.exam || EMBEDDED || !view.image) return;
  const compare = await import('./compare.js');
  const exams = await compare.patientExams(view.exam, value(view.image.item, '00100020', ''));
  if (!compare.fillChoices($('compare-with'), exams, view.exam, formatDate)) return;
  $('compare-tools').hidden = false;
  $('compare').addEventListener('click', () => toggleComparison(compare));
  $('compare-with').addEventListener('change', () => { if (view.peer) openPeer(compare); });
}

function toggleComparison(compare) {
  if (view.peer) {
    view.peer.remove();
    view.peer = null;
    delete document.body.dataset.compare;
  } else {
    openPeer(compare);
  }
  $('compare').setAttribute('aria-pressed', String(Boolean(view.peer)));
}

function openPeer(compare) {
  view.peer?.remove();
  const frame = document.createElement('iframe');
  frame.id = 'peer';
  frame.title = t('compare.frame');
  frame.src = compare.peerUrl($('compare-with').value);
  view.peer = frame;
  document.body.dataset.compare = '1';
  document.querySelector('main').append(frame);
}

// Scrolling in step: each side says where it is as a fraction of its stack (two exams rarely have as many
// slices), the other goes there. A position received is not sent back.
let following = false;
function announce() {
  const target = view.peer ? view.peer.contentWindow : (EMBEDDED ? window.parent : null);
  if (!target || following || !view.stack || !$('sync').checked) return;
  target.postMessage({ drimbox: 'scroll', fraction: view.index / Math.max(1, view.stack.length - 1) }, location.origin);
}

window.addEventListener('message', (e) => {
  if (e.origin !== location.origin || e.data?.drimbox !== 'scroll' || !view.stack) return;
  if (!EMBEDDED && !$('sync').checked) return;
  const index = Math.round(Number(e.data.fraction) * (view.stack.length - 1));
  if (!Number.isFinite(index) || index === view.index) return;
  following = true;
  show(index).catch(fail).finally(() => { following = false; });
});

function formatDate(d) {
  // As the box's pages write dates: 08/01/2021 in French, ISO in English.
  const digits = String(d).replace(/-/g, '');
  if (!/^\d{8}$/.test(digits)) return String(d);
  return (i18n?.LANG || 'fr') === 'fr' ? `${digits.slice(6)}/${digits.slice(4, 6)}/${digits.slice(0, 4)}` : `${digits.slice(0, 4)}-${digits.slice(4, 6)}-${digits.slice(6)}`;
}

const isMeasureTool = (tool) => tool === 'distance' || tool === 'angle';

async function main() {
  const params = new URLSearchParams(location.search);
  const kos = params.get('kos') || '';
  const base = params.get('base') || (kos ? '/conso/dicom-web' : '/dicom-web');
  let study = params.get('study') || '';
  if (!BASES.includes(base)) throw problem('error.address');
  if (kos && !UID.test(kos)) throw problem('error.kos');
  if (!study && kos) study = await studyOfKos(kos);
  if (!UID.test(study)) throw problem('error.study');
  const link = new LinkMeter();
  link.onchange = (slow) => { document.body.dataset.link = slow ? 'slow' : 'fast'; };
  const api = new Dicomweb(base, study, kos, link);
  setupControls();
  // The series list (QIDO) and, only if the box holds it already, the whole study's metadata, side by side:
  // warm, the metadata opens the first series without waiting for the list; cold, it is a quick 504.
  const cached = api.studyMetadata(true);
  cached.catch(() => {});
  const listed = api.series().then((series) => series.sort(bySeriesNumber));
  listed.then((series) => { for (const s of series) view.series.set(value(s, '0020000E'), s); }, () => {});
  listed.then((series) => showSeriesList(api, series), () => {});
  // Cold (the box does not hold the study yet), the list takes the PACS a while: the decoder starts meanwhile.
  // Warm, the first frame follows at once, and a worker starting beside it would only slow it down.
  cached.catch(() => warmUp());
  // The metadata is waited for even when the list comes first: a 504 is as quick as the list, and the metadata
  // saves the series' own request.
  // `series=` (the consumer's per-series View) opens that series first, when the study has it.
  const wanted = params.get('series') || '';
  const pick = (uids) => (wanted && uids.includes(wanted) ? wanted : uids[0]);
  const first = await cached.then((items) => {
    const uid = pick([...items].sort(bySeriesNumber).map((i) => value(i, '0020000E')));
    return uid ? { uid, items: items.filter((i) => value(i, '0020000E') === uid) } : Promise.reject(new Error('empty'));
  }).catch(() => listed.then((series) => ({ uid: pick(series.map((s) => value(s, '0020000E'))), items: null })));
  if (!first.uid) throw problem('error.empty_study');
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
  const exam = await resp.json();
  view.exam = exam;
  showReportButton(exam.report);
  return exam.study_uid || '';
}

// The exam's report, when the consumer knows one (`report: {url, title, date}`); no field, or null: no button.
function showReportButton(report) {
  const link = $('report');
  if (!report || typeof report.url !== 'string' || !report.url.startsWith('/')) return; // same box only
  link.href = report.url;
  if (report.title) link.dataset.title = report.title;
  link.hidden = false;
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
  const count = Number(value(view.series.get(seriesUid) || {}, '00201209', 0)) || 0;
  const listed = metadata ? Promise.reject(new Error('not needed')) : api.instances(seriesUid, abort.signal, count);
  cached.catch(() => {});
  listed.catch(() => {});
  const first = await Promise.any([
    cached.then((items) => ({ items, complete: true })),
    listed.then((items) => (items.length ? { items, complete: false } : Promise.reject(new Error('no instances')))),
  ]).catch(async () => ({ items: await api.seriesMetadata(seriesUid), complete: true })); // its error is the one to show
  if (first.complete) abort.abort(); // nothing left to learn from the instance list
  if (token !== view.token) return;
  if (!first.items.length) throw problem('error.empty_series');
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
  $('study-date').textContent = /^\d{8}$/.test(d) ? formatDate(d) : '—';
  $('modality').textContent = value(item, '00080060', '—');
  $('description').textContent = value(item, '00081030', '—');
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
  if (dropPreview()) paint(); // another image's preview
  const stage = $('stage');
  if (!stack.loaded.has(index)) stage.classList.add('busy');
  // On a slow link, a lossy preview while the exact image is on its way (never measured or windowed on).
  if (!stack.loaded.has(index) && stack.slow && view.image?.kind === 'gray') {
    const { width, height } = view.image;
    stack.preview(index, width, height, view.window).then((bitmap) => {
      if (stack === view.stack && index === view.index && !stack.loaded.has(index)) showPreview(bitmap, index);
    }, () => {});
  }
  // Never a blank slice: the nearest one in memory stands in, marked, until this one arrives.
  if (!stack.loaded.has(index) && view.image && !view.preview) standInLater(stack, index);
  stack.focus(index); // the direction of scrolling; what the user has scrolled past is cancelled
  let image;
  try {
    image = await stack.image(index);
  } catch (error) {
    if (stack !== view.stack || index !== view.index) return; // cancelled: the user has moved on
    throw error;
  } finally {
    if (index === view.index) stage.classList.remove('busy');
  }
  if (stack !== view.stack || index !== view.index) return; // the user has moved on meanwhile
  const first = view.image === null;
  dropPreview();
  dropStandIn();
  view.image = image;
  if (first) showBanner(image.item);
  if (first || !view.window) view.window = image.kind === 'gray' ? defaultWindow(image) : null;
  if (first) fit();
  if (!$('tags').hidden && extras) extras.panels.fillTags(image.item);
  showMeasurements();
  renderImage();
  document.body.dataset.state = 'ready';
  canvas.dataset.index = String(index);
  canvas.dataset.instance = stack.frames[index].uid; // for the tests: which instance the stack put here
  canvas.dataset.aborted = String(stack.aborted); // requests cancelled because the user scrolled past them
  canvas.dataset.memoryMb = (stack.memoryBytes / 1048576).toFixed(1);
  logPaint(`e${index}`);
  announce();
  if (!view.painted) {
    view.painted = true;
    performance.mark('first-image');
    loadThumbnails();
    loadLater();
  }
  // Neighbours after the paint: before it, they would only compete with the first image.
  stack.preload(index);
}

// A stand-in only for a wait the eye would notice: painting one costs as much as painting the image (windowing a
// 512² slice), and while scrolling through loaded slices (the next one a few ms away) it doubled the work of every
// step: the perf suite's 260-slice pass took 2-3 s longer. Meanwhile the previous slice stays on screen.
const STAND_IN_AFTER_MS = 100;

function standInLater(stack, index) {
  clearTimeout(view.standInTimer);
  view.standInTimer = setTimeout(() => {
    if (stack === view.stack && index === view.index && !stack.loaded.has(index)) showStandIn(stack, index);
  }, STAND_IN_AFTER_MS);
}

// The nearest slice in memory, drawn while this one is on its way, with a marker naming it; no tool works on it
// (paint() draws no measurement), and the exact image replaces it.
function showStandIn(stack, index) {
  const near = stack.nearestLoaded(index);
  if (near === null) return;
  stack.cache.get(near).then((image) => {
    if (stack !== view.stack || index !== view.index || stack.loaded.has(index) || view.preview) return;
    view.standIn = near;
    view.image = image;
    canvas.dataset.standIn = String(near);
    const mark = $('nearest-mark');
    mark.textContent = t('nearest', { n: near + 1 }) || `≈ ${near + 1}`;
    mark.hidden = false;
    renderImage();
    logPaint(`n${index}`);
  }, () => {});
}

function dropStandIn() {
  if (view.standIn === null || view.standIn === undefined) return;
  view.standIn = null;
  delete canvas.dataset.standIn;
  $('nearest-mark').hidden = true;
}

// The preview drawn where the exact image will be (at the size of the image shown before it), marked as such;
// view.image stays the last exact image and paint() draws no measurement over a preview: no tool works on it.
function showPreview(bitmap, index) {
  view.preview = bitmap;
  canvas.dataset.preview = String(index);
  $('preview-mark').hidden = false;
  paint();
  logPaint(`p${index}`);
}

function dropPreview() {
  if (!view.preview) return false;
  view.preview = null;
  delete canvas.dataset.preview;
  $('preview-mark').hidden = true;
  return true;
}

// The last paints, for the tests and the perf suite: p<index> a preview, n<index> the nearest slice standing in,
// e<index> an exact image.
function logPaint(entry) {
  canvas.dataset.paints = [...(canvas.dataset.paints || '').split(' ').filter(Boolean), entry].slice(-20).join(' ');
}

// Window/level into the image-sized canvas; placing and scaling it on screen is the compositor's (paint()). Scaled
// by a 2D canvas instead, every step of a scroll rasterised a screen-sized image: 1.6 of the 3 ms a step through
// loaded slices cost on the page's thread (a 1300-slice pass 3.8 s → 0.8 s).
function renderImage() {
  const image = view.image;
  if (!image) return;
  if (pixels.width !== image.width || pixels.height !== image.height) {
    pixels.width = image.width;
    pixels.height = image.height;
    pixels.style.width = `${image.width}px`;
    pixels.style.height = `${image.height}px`;
  }
  const started = performance.now();
  if (image.kind === 'gray') {
    // One ImageData per image size, reused: a new 1 MB one at every step of a scroll is garbage for the collector.
    if (!windowed || windowed.width !== image.width || windowed.height !== image.height) {
      windowed = pctx.createImageData(image.width, image.height);
    }
    applyWindow(image, view.window, windowed);
    pctx.putImageData(windowed, 0, 0);
  } else {
    pctx.drawImage(image.bitmap, 0, 0);
  }
  showReadouts();
  paint();
  // Exposed for the tests and the perf suite: the time of the last window/level + paint, in ms.
  canvas.dataset.renderMs = (performance.now() - started).toFixed(1);
  // And the transfer syntax the frame travelled in (stored JPEG-LS decoded here, or native from the box).
  if (image.syntax) canvas.dataset.transferSyntax = image.syntax;
  if (image.hash !== undefined) canvas.dataset.pixelHash = String(image.hash);
}

// The image placed (zoom, pan; no smoothing once enlarged 3 times: the pixels themselves), then the overlay: a
// preview over it, or its measurements. An overlay with nothing to draw is not touched (each step of a scroll).
function paint() {
  const ratio = window.devicePixelRatio || 1;
  const stage = stageBox();
  const w = Math.round(stage.width * ratio), h = Math.round(stage.height * ratio);
  const resized = canvas.width !== w || canvas.height !== h;
  if (resized) { canvas.width = w; canvas.height = h; }
  const image = view.image;
  pixels.hidden = !image;
  if (!image) return clearOverlay(resized);
  const placed = `translate(-50%, -50%) translate(${view.panX}px, ${view.panY}px) scale(${view.zoom})`;
  if (pixels.style.transform !== placed) pixels.style.transform = placed;
  const rendering = view.zoom < 3 ? 'auto' : 'pixelated';
  if (pixels.style.imageRendering !== rendering) pixels.style.imageRendering = rendering;
  canvas.dataset.zoom = view.zoom.toFixed(3); // for the tests
  const measures = view.standIn === null || view.standIn === undefined ? currentMeasures() : []; // not another slice's
  if (!view.preview && !(measures.length && extras)) return clearOverlay(resized);
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, w, h);
  overlayDrawn = true;
  if (view.preview) {
    const s = view.zoom * ratio;
    ctx.setTransform(s, 0, 0, s, w / 2 + view.panX * ratio, h / 2 + view.panY * ratio);
    ctx.imageSmoothingEnabled = view.zoom < 3;
    ctx.drawImage(view.preview, -image.width / 2, -image.height / 2, image.width, image.height);
    return;
  }
  const toScreen = (p) => { const [x, y] = toCanvas(p); return [x * ratio, y * ratio]; };
  extras.measure.draw(ctx, measures, image.item, toScreen, ratio);
}

function clearOverlay(resized) {
  if (overlayDrawn && !resized) { // a canvas given a new size is cleared by that
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
  }
  overlayDrawn = false;
}

// The stage's size in CSS pixels as the last layout left it (the overlay fills it): read from the element at each
// step of a scroll, it forced a layout (the position and progress just written), most of what a loaded step cost.
function stageBox() {
  return (stageSize ||= { width: canvas.clientWidth, height: canvas.clientHeight });
}

// Image pixels ↔ the canvas's CSS pixels, through the zoom and pan paint() applies.
function toCanvas(p) {
  const stage = stageBox();
  return [(p.x - view.image.width / 2) * view.zoom + stage.width / 2 + view.panX,
    (p.y - view.image.height / 2) * view.zoom + stage.height / 2 + view.panY];
}

function toImage(clientX, clientY) {
  const r = canvas.getBoundingClientRect(), stage = stageBox();
  return { x: (clientX - r.left - stage.width / 2 - view.panX) / view.zoom + view.image.width / 2,
    y: (clientY - r.top - stage.height / 2 - view.panY) / view.zoom + view.image.height / 2 };
}

function currentMeasures() {
  const key = view.stack?.frames[view.index]?.key;
  if (!key) return [];
  if (!view.measures.has(key)) view.measures.set(key, []);
  return view.measures.get(key);
}

// The finished measurements of the image on screen, as text (for reading them out, and for the tests).
function showMeasurements() {
  const list = $('measurements');
  const items = view.image && extras ? currentMeasures().filter((m) => m.done).map((m) => {
    const li = document.createElement('li');
    li.dataset.kind = m.kind;
    li.textContent = extras.measure.label(m, view.image.item);
    return li;
  }) : [];
  list.replaceChildren(...items);
}

function showReadouts() {
  const image = view.image;
  $('wl').textContent = image?.kind === 'gray' && view.window
    ? t('wl', { width: Math.round(view.window.width), center: Math.round(view.window.center) }) : '';
  if (view.stack) showProgress();
  $('cine').textContent = t(view.cine ? 'cine.stop' : 'cine.play') || $('cine').textContent;
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
  const stage = stageBox();
  view.zoom = Math.min(stage.width / view.image.width, stage.height / view.image.height);
  view.panX = view.panY = 0;
  view.fitted = true;
  schedule(paint);
}

function reset() {
  if (view.image?.kind === 'gray') view.window = defaultWindow(view.image);
  view.measures.clear();
  showMeasurements();
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
  cancelMeasure();
  view.tool = tool;
  for (const b of document.querySelectorAll('[data-tool]')) b.setAttribute('aria-pressed', String(b.dataset.tool === tool));
}

function scrollBy(step) {
  if (view.stack) show(view.index + step).catch(fail);
}

// A measurement in progress: the points placed so far, the next one following the pointer.
function measureAt(e) {
  if (!view.image || !extras) return;
  const measures = currentMeasures();
  let m = measures.find((x) => !x.done);
  const p = toImage(e.clientX, e.clientY);
  if (!m) {
    m = { kind: view.tool, points: [p], done: false };
    measures.push(m);
  }
  m.points[m.points.length - 1] = p;
  if (m.points.length === extras.measure.POINTS[m.kind]) {
    m.done = true;
    showMeasurements();
  } else {
    m.points.push({ ...p });
  }
  schedule(paint);
}

function followPointer(e) {
  const m = currentMeasures().find((x) => !x.done);
  if (!m || !view.image) return;
  m.points[m.points.length - 1] = toImage(e.clientX, e.clientY);
  schedule(paint);
}

function cancelMeasure() {
  const measures = currentMeasures();
  const open = measures.findIndex((m) => !m.done);
  if (open >= 0) { measures.splice(open, 1); schedule(paint); }
}

// Cine: the next image every 1/fps s, looping; an image not yet loaded is waited for rather than skipped.
function toggleCine(on = !view.cine) {
  if (view.cine) { clearTimeout(view.cine.timer); view.cine = null; }
  if (on && view.stack) {
    const cine = { timer: null };
    view.cine = cine;
    const step = () => {
      if (view.cine !== cine) return;
      const fps = Math.max(1, Math.min(30, Number($('fps').value) || 10));
      const started = performance.now();
      show((view.index + 1) % view.stack.length).catch(fail).finally(() => {
        cine.timer = setTimeout(step, Math.max(0, 1000 / fps - (performance.now() - started)));
      });
    };
    cine.timer = setTimeout(step, 0);
  }
  $('cine').setAttribute('aria-pressed', String(Boolean(view.cine)));
  showReadouts();
}

function toggle(panel, button, open = panel.hidden) {
  panel.hidden = !open;
  button.setAttribute('aria-pressed', String(open));
  return open;
}

function toggleHelp() {
  const help = $('help');
  if (help.open) help.close(); else help.showModal();
}

function setupControls() {
  $('cine').addEventListener('click', () => toggleCine());
  $('tags-toggle').addEventListener('click', () => {
    if (toggle($('tags'), $('tags-toggle')) && view.image && extras) extras.panels.fillTags(view.image.item);
  });
  $('help-toggle').addEventListener('click', toggleHelp);
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
  const touches = new Map(); // pointerId → {x, y}: two of them make a pinch
  let pinch = null;
  canvas.addEventListener('pointerdown', (e) => {
    canvas.focus();
    canvas.setPointerCapture(e.pointerId);
    if (e.pointerType === 'touch') touches.set(e.pointerId, { x: e.clientX, y: e.clientY });
    if (touches.size === 2) {
      // Two fingers: pinch zoom and pan, whatever the tool; a measurement begun by the first finger is dropped.
      cancelMeasure();
      const [a, b] = [...touches.values()];
      pinch = { distance: Math.hypot(a.x - b.x, a.y - b.y) || 1, mid: [(a.x + b.x) / 2, (a.y + b.y) / 2], zoom: view.zoom, panX: view.panX, panY: view.panY };
      drag = null;
      return;
    }
    if (isMeasureTool(view.tool)) { measureAt(e); return; }
    drag = { x: e.clientX, y: e.clientY, window: view.window, zoom: view.zoom, panX: view.panX, panY: view.panY, index: view.index, touch: e.pointerType === 'touch' };
  });
  canvas.addEventListener('pointermove', (e) => {
    if (touches.has(e.pointerId)) touches.set(e.pointerId, { x: e.clientX, y: e.clientY });
    if (pinch && touches.size === 2) {
      const [a, b] = [...touches.values()];
      view.zoom = Math.max(0.05, pinch.zoom * Math.hypot(a.x - b.x, a.y - b.y) / pinch.distance);
      view.panX = pinch.panX + (a.x + b.x) / 2 - pinch.mid[0];
      view.panY = pinch.panY + (a.y + b.y) / 2 - pinch.mid[1];
      view.fitted = false;
      schedule(paint);
      return;
    }
    if (isMeasureTool(view.tool)) { followPointer(e); return; }
    if (!drag) return;
    const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (drag.touch && view.tool !== 'pan') {
      // One finger on a tablet scrolls the stack (a finger has no wheel): one image per 12 px, upwards forward
      // as a touch screen scrolls a page.
      const target = drag.index - Math.round(dy / 12);
      if (target !== view.index) scrollBy(target - view.index);
    } else if (view.tool === 'window' && drag.window) {
      // Right widens the window, down raises the level: the usual radiology convention.
      setWindow(drag.window.center + dy * drag.window.width / 256, drag.window.width + dx * drag.window.width / 128);
    } else if (view.tool === 'pan') {
      view.panX = drag.panX + dx; view.panY = drag.panY + dy; view.fitted = false; schedule(paint);
    } else if (view.tool === 'zoom') {
      view.zoom = Math.max(0.05, drag.zoom * Math.exp(-dy / 200)); view.fitted = false; schedule(paint);
    }
  });
  const end = (e) => { drag = null; touches.delete(e.pointerId); if (touches.size < 2) pinch = null; };
  canvas.addEventListener('pointerup', end);
  canvas.addEventListener('pointercancel', end);
  document.addEventListener('keydown', (e) => {
    if (e.target instanceof HTMLInputElement || e.target instanceof HTMLSelectElement) return;
    if ($('help').open) return; // the dialog has the keyboard: Escape closes it
    const keys = {
      ArrowUp: () => scrollBy(-1), ArrowDown: () => scrollBy(1), PageUp: () => scrollBy(-10), PageDown: () => scrollBy(10),
      Home: () => scrollBy(-view.index), End: () => scrollBy(Infinity),
      '+': () => zoomBy(1.2), '-': () => zoomBy(1 / 1.2),
      f: fit, r: reset, w: () => setTool('window'), p: () => setTool('pan'), z: () => setTool('zoom'),
      d: () => setTool('distance'), a: () => setTool('angle'), ' ': () => toggleCine(),
      t: () => $('tags-toggle').click(), '?': toggleHelp,
      Escape: () => { cancelMeasure(); toggle($('tags'), $('tags-toggle'), false); },
    };
    const action = keys[e.key.length === 1 ? e.key.toLowerCase() : e.key] || keys[e.key];
    if (action && !e.ctrlKey && !e.metaKey && !e.altKey) { e.preventDefault(); action(); }
  });
  new ResizeObserver(([entry]) => {
    stageSize = { width: entry.contentRect.width, height: entry.contentRect.height };
    if (view.fitted) fit(); else schedule(paint);
  }).observe($('stage'));
}

function showProgress() {
  const { stack } = view;
  const bar = $('progress');
  bar.max = stack.length;
  bar.value = stack.loaded.size;
  bar.title = t('loaded', { n: bar.value, total: stack.length });
}

async function fail(error) {
  if (error instanceof HttpError && error.status === 401) {
    // Not logged in (or the session ended): log in, then come back to this very view.
    location.assign(`/auth/login?next=${encodeURIComponent(location.pathname + location.search)}`);
    return;
  }
  toggleCine(false);
  await loadLater();
  const known = [403, 404, 410, 503];
  const text = error instanceof HttpError
    ? (known.includes(error.status) ? t(`error.${error.status}`) : t('error.http', { status: error.status }))
    : error.key ? t(error.key) : error.message || String(error);
  const box = $('message');
  box.textContent = text;
  box.hidden = false;
  document.body.dataset.state = 'error';
  loadThumbnails(); // the other series may still be worth a look
}
