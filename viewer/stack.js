// One series as a stack of frames: loading with prefetch in the direction of scrolling, requests for slices passed
// over cancelled, a memory budget in MB, and painting with window/level applied in the browser (no round trip per
// change, so a drag stays well under 100 ms).
import { NATIVE, value } from './dicomweb.js';
import { decodable, decode } from './codecs.js';

const AHEAD = 16; // images fetched ahead of the current one, in the direction of scrolling
const BEHIND = 3; // and behind it (a user who turns back)
const PARALLEL = 4;
// Requests already sent are cancelled only for a slice this far away (a jump, the slider dragged): one nearby will
// likely be wanted again soon, and Chromium keeps an answer cut short as a cache entry it cannot use, so that frame
// was downloaded in full again at every reopen (measured: 28 frames of 260, 11 % of the study, on a warm reopen).
// Queued requests (never sent) are always dropped.
const ABORT_IN_FLIGHT_BEYOND = 64;
// A link where an exact frame takes longer than this (smoothed over the frames so far) is slow: the image the user
// waits for comes first as a small lossy JPEG rendered by the box, then the exact frame replaces it.
const PREVIEW_AFTER_MS = 300;
const PREVIEW_QUALITY = 60;

// Decoded images kept in memory, in MB: an eighth of the device's memory (navigator.deviceMemory, in GB, rounded
// and capped at 8 by browsers; 4 when unknown), between 192 MB (a 512² CT: ~380 slices) and 1 GB (~2000 slices).
export function memoryBudgetMB(deviceMemory = globalThis.navigator?.deviceMemory) {
  const gb = Number(deviceMemory) > 0 ? Number(deviceMemory) : 4;
  return Math.round(Math.min(1024, Math.max(192, gb * 128)));
}

// Where an image lies along the slice normal (Image Position Patient · (row × column direction)), or null.
function positionOf(item) {
  const ipp = item?.['00200032']?.Value, iop = item?.['00200037']?.Value;
  if (!ipp || ipp.length !== 3 || !iop || iop.length !== 6) return null;
  const [r0, r1, r2, c0, c1, c2] = iop.map(Number);
  const n = [r1 * c2 - r2 * c1, r2 * c0 - r0 * c2, r0 * c1 - r1 * c0];
  const d = n[0] * ipp[0] + n[1] * ipp[1] + n[2] * ipp[2];
  return Number.isFinite(d) ? d : null;
}

// The stack's order: by position along the slice normal when every image has one (as a workstation stacks a CT,
// whatever order the PACS answers in, gaps in the numbering included), in the direction the InstanceNumbers run
// (head first when the modality numbered so); else by InstanceNumber. Multi-frame instances expanded into their
// frames (a multi-frame series keeps InstanceNumber order); ties keep InstanceNumber order.
export function framesOf(items) {
  const frames = [];
  const byNumber = [...items].sort((a, b) => value(a, '00200013', 0) - value(b, '00200013', 0));
  const positions = new Map(byNumber.map((item) => [item, positionOf(item)]));
  // A multi-frame instance's own position is its first frame's at best: only single-frame stacks are placed so.
  const single = byNumber.every((item) => (Number(value(item, '00280008', 1)) || 1) === 1);
  const positioned = single && byNumber.length > 1 && [...positions.values()].every((d) => d !== null);
  const sign = positioned && positions.get(byNumber[0]) > positions.get(byNumber[byNumber.length - 1]) ? -1 : 1;
  const sorted = positioned ? [...byNumber].sort((a, b) => sign * (positions.get(a) - positions.get(b))) : byNumber;
  for (const item of sorted) {
    const count = Number(value(item, '00280008', 1)) || 1;
    for (let f = 1; f <= count; f++) frames.push({ uid: value(item, '00080018'), frame: f, key: `${value(item, '00080018')}/${f}` });
  }
  return frames;
}

function bytesOf(image) {
  return image.kind === 'gray' ? image.pixels.byteLength : image.width * image.height * 4;
}

export class Stack {
  // `items`: the series' metadata when `complete`, else its QIDO instance list (UIDs, numbers, frame counts);
  // then the first images fetch their own instance metadata until `complete()` brings the series'.
  constructor(api, seriesUid, items, complete) {
    this.api = api;
    this.seriesUid = seriesUid;
    this.frames = framesOf(items);
    this.metadata = new Map(); // SOP Instance UID → full metadata item (pixel module)
    this.own = new Map(); // SOP Instance UID → Promise of its own instance-level metadata
    this.isComplete = false;
    this.preloadAt = null; // the preload asked for before the series metadata was there
    if (complete) this.complete(items);
    this.cache = new Map(); // index → Promise<image>
    this.loaded = new Set(); // indices whose image is in memory
    this.sizes = new Map(); // index → bytes of its decoded image
    this.budget = memoryBudgetMB() * 1024 * 1024;
    this.queue = [];
    this.active = 0;
    this.jobs = new Map(); // frame key → its job while queued or loading: {frame, controller, ...}
    this.center = null; // the current image, for the direction of scrolling
    this.direction = 1;
    this.aborted = 0; // requests cancelled because the user scrolled past them (for the tests and the perf suite)
    this.onprogress = () => {};
    this.exactMs = null; // smoothed time an exact frame takes to arrive (the link, not the decode)
    this.previews = new Map(); // index → Promise<ImageBitmap> of its lossy preview
    this.index = null; // frame key → its index in `indexed` (indexOf)
    this.indexed = null; // the frames `index` was made from
  }

  // Is the link slow enough that the shown image should come first as a preview?
  get slow() {
    return this.exactMs !== null && this.exactMs > PREVIEW_AFTER_MS;
  }

  // A lossy JPEG of image `index` at `width` × `height` (the previous image's size halved: a quarter of the
  // pixels), in window `win` when one is chosen, else the image's own. Asked beside the preloads, not queued.
  preview(index, width, height, win) {
    let promise = this.previews.get(index);
    if (!promise) {
      const { uid, frame } = this.frames[index];
      const params = new URLSearchParams({ quality: String(PREVIEW_QUALITY) });
      if (width && height) params.set('viewport', `${Math.ceil(width / 2)},${Math.ceil(height / 2)}`);
      if (win) params.set('window', `${win.center},${win.width},linear`);
      promise = this.api.renderedFrame(this.seriesUid, uid, frame, 'image/jpeg', params);
      this.previews.set(index, promise);
      promise.catch(() => this.previews.delete(index));
    }
    return promise;
  }

  get length() {
    return this.frames.length;
  }

  // The series' metadata has arrived: every image is decoded from it from now on. If the instance list had
  // other frame counts (a PACS that does not return NumberOfFrames), the stack is rebuilt and `index` (an
  // index in the old stack) is returned as its index in the new one.
  complete(items, index = 0) {
    for (const item of items) this.metadata.set(value(item, '00080018'), item);
    this.isComplete = true;
    const frames = framesOf(items);
    let moved = index;
    if (frames.map((f) => f.key).join() !== this.frames.map((f) => f.key).join()) {
      const position = new Map(frames.map((f, i) => [f.key, i]));
      const cache = new Map(), loaded = new Set(), sizes = new Map();
      for (const [i, promise] of this.cache) {
        const j = position.get(this.frames[i].key);
        if (j === undefined) continue;
        cache.set(j, promise);
        if (this.loaded.has(i)) loaded.add(j);
        if (this.sizes.has(i)) sizes.set(j, this.sizes.get(i));
      }
      moved = Math.max(0, position.get(this.frames[index]?.key) ?? Math.min(index, frames.length - 1));
      Object.assign(this, { frames, cache, loaded, sizes });
      if (this.center !== null) this.center = moved;
    }
    if (this.preloadAt !== null) this.preload(moved);
    return moved;
  }

  // The image at `index`, loaded now if it is not already on its way.
  image(index) {
    let promise = this.cache.get(index);
    if (!promise) {
      const frame = this.frames[index];
      const job = { frame, controller: new AbortController() };
      promise = new Promise((resolve, reject) => Object.assign(job, { resolve, reject }));
      this.queue.unshift(job);
      this.jobs.set(frame.key, job);
      this.cache.set(index, promise);
      promise.then((image) => {
        const at = this.indexOf(frame.key) ?? -1; // a rebuild may have moved it
        if (at >= 0 && this.cache.get(at) === promise) {
          this.loaded.add(at);
          this.sizes.set(at, bytesOf(image));
        }
        if (at >= 0) this.previews.delete(at);
        this.onprogress();
        this.evict(this.center ?? at);
      }, () => { for (const [i, p] of this.cache) if (p === promise) this.cache.delete(i); });
      this.pump();
    }
    return promise;
  }

  // The nearest image already in memory (at most `reach` away), shown in place of one on its way; null if none.
  nearestLoaded(index, reach = 50) {
    for (let d = 1; d <= reach; d++) {
      for (const i of [index - this.direction * d, index + this.direction * d]) if (this.loaded.has(i)) return i;
    }
    return null;
  }

  // The user is at `center`: fetch ahead in the direction of scrolling (and a little behind), cancel what is queued
  // or in flight for slices left outside that window (the box's handler is cancelled with the connection), and keep
  // memory within the budget. Before the series' metadata is there, nothing beyond `center`: each would cost a
  // metadata request of its own, and on a cold box they would compete with the first image for the same retrieve.
  preload(center) {
    this.focus(center);
    if (!this.isComplete) {
      this.preloadAt = center;
      return;
    }
    this.preloadAt = null;
    const wanted = [];
    for (let d = 1; d <= AHEAD; d++) {
      wanted.push(center + this.direction * d);
      if (d <= BEHIND) wanted.push(center - this.direction * d);
    }
    // Asked farthest first: each request goes to the front of the queue, so the nearest is fetched first.
    for (const i of wanted.filter((i) => i >= 0 && i < this.length).reverse()) this.image(i).catch(() => {});
    this.evict(center);
  }

  // The user is now at `center`: the direction of scrolling follows, and what lies outside the window is cancelled.
  focus(center) {
    if (this.center !== null && center !== this.center) this.direction = center > this.center ? 1 : -1;
    this.center = center;
    this.cancelOutside(center);
  }

  inWindow(i, center) {
    const ahead = (i - center) * this.direction;
    return ahead >= -BEHIND && ahead <= AHEAD;
  }

  // Where the frame of `key` is in the stack now (a rebuild may move it), or undefined: a map made once per stack
  // (made at each step of a scroll, it was a tenth of what a step through loaded slices cost).
  indexOf(key) {
    if (this.indexed !== this.frames) {
      this.index = new Map(this.frames.map((f, i) => [f.key, i]));
      this.indexed = this.frames;
    }
    return this.index.get(key);
  }

  cancelOutside(center) {
    for (const [key, job] of this.jobs) {
      const i = this.indexOf(key);
      if (i !== undefined && this.inWindow(i, center)) continue;
      if (job.started && i !== undefined && Math.abs(i - center) <= ABORT_IN_FLIGHT_BEYOND) continue;
      this.jobs.delete(key);
      this.queue = this.queue.filter((j) => j !== job);
      job.controller.abort();
      job.reject(Object.assign(new Error('scrolled past'), { name: 'AbortError' }));
      this.aborted++;
    }
  }

  // Over the budget, the images farthest from the current one go first; never those of the prefetch window.
  evict(center) {
    let total = 0;
    for (const bytes of this.sizes.values()) total += bytes;
    if (total <= this.budget) return;
    const far = [...this.sizes.keys()].filter((i) => !this.inWindow(i, center))
      .sort((a, b) => Math.abs(b - center) - Math.abs(a - center));
    for (const i of far) {
      if (total <= this.budget) break;
      total -= this.sizes.get(i);
      this.sizes.delete(i);
      this.cache.delete(i);
      this.loaded.delete(i);
    }
  }

  get memoryBytes() {
    let total = 0;
    for (const bytes of this.sizes.values()) total += bytes;
    return total;
  }

  pump() {
    while (this.active < PARALLEL && this.queue.length) {
      const job = this.queue.shift();
      job.started = true;
      this.active++;
      this.load(job.frame, job.controller.signal).then(job.resolve, job.reject).finally(() => {
        if (this.jobs.get(job.frame.key) === job) this.jobs.delete(job.frame.key);
        this.active--;
        this.pump();
      });
    }
  }

  // The instance's own metadata, asked once: what an image needs before the series' metadata has arrived.
  ownMetadata(uid) {
    let promise = this.own.get(uid);
    if (!promise) {
      promise = this.api.instanceMetadata(this.seriesUid, uid).then((items) => {
        if (!items.length) throw Object.assign(new Error('error.no_metadata'), { key: 'error.no_metadata' });
        return items[0];
      });
      this.own.set(uid, promise);
      promise.catch(() => this.own.delete(uid));
    }
    return promise;
  }

  // The frame's stored values: asked in its stored syntax when a worker can decode it, decoded there.
  // A decoder that fails (a worker that cannot start, a bitstream it refuses) costs one more request, uncompressed.
  async pixels(uid, frame, signal) {
    const started = performance.now();
    const got = await this.api.frame(this.seriesUid, uid, frame, decodable, signal);
    // The link's time only: the decode is not what a preview would save, and the first frame's includes starting
    // the codec (compiling its WebAssembly, ~0.3 s), which made one frame in 260 be asked again as a preview.
    this.timed(started);
    if (got.syntax === NATIVE) return got;
    try {
      const decoded = await decode(got.syntax, got.buffer);
      return { syntax: got.syntax, buffer: decoded.buffer };
    } catch (error) {
      console.warn(`frame decode failed (${got.syntax}): ${error.message}`);
      const again = await this.api.frame(this.seriesUid, uid, frame, [], signal);
      return { syntax: again.syntax, buffer: again.buffer };
    }
  }

  timed(started) {
    const ms = performance.now() - started;
    this.exactMs = this.exactMs === null ? ms : 0.7 * this.exactMs + 0.3 * ms;
  }

  async load({ uid, frame }, signal) {
    let item = this.metadata.get(uid);
    let raw = null;
    if (!item) {
      // The frame is asked alongside the metadata (not after it): one round trip, not two. Grayscale is by far
      // the common case; a colour image throws this answer away and asks for the rendered one.
      raw = this.pixels(uid, frame, signal);
      raw.catch(() => {});
      item = await this.ownMetadata(uid);
    }
    const rows = value(item, '00280010'), cols = value(item, '00280011');
    const photometric = value(item, '00280004', 'MONOCHROME2');
    if (value(item, '00280002', 1) !== 1 || !photometric.startsWith('MONOCHROME')) {
      // Colour: the server renders it; window/level does not apply.
      const bitmap = await this.api.renderedFrame(this.seriesUid, uid, frame);
      return { kind: 'bitmap', bitmap, width: bitmap.width, height: bitmap.height, item };
    }
    const { syntax, buffer } = await (raw || this.pixels(uid, frame, signal));
    const bits = value(item, '00280100', 16), signed = value(item, '00280103', 0) === 1;
    const Type = bits === 8 ? (signed ? Int8Array : Uint8Array) : (signed ? Int16Array : Uint16Array);
    const pixels = new Type(buffer, 0, rows * cols);
    const stored = value(item, '00280101', bits);
    if (syntax !== NATIVE && signed && stored < bits) signExtend(pixels, stored);
    const slope = Number(value(item, '00281053', 1)), intercept = Number(value(item, '00281052', 0));
    let min = Infinity, max = -Infinity, hash = 0;
    for (let i = 0; i < pixels.length; i++) {
      const v = pixels[i];
      if (v < min) min = v;
      if (v > max) max = v;
      hash = (Math.imul(hash, 31) + v) | 0; // the stored values' fingerprint, for the tests (cheap in this loop)
    }
    return {
      hash,
      kind: 'gray', pixels, width: cols, height: rows, slope, intercept, item, syntax,
      invert: photometric === 'MONOCHROME1', storedMin: min, storedMax: max,
      min: min * slope + intercept, max: max * slope + intercept,
      center: Number(value(item, '00281050')), width_: Number(value(item, '00281051')),
    };
  }
}

// A codec returns a signed sample's BitsStored low bits as they were coded: its sign bit is bit BitsStored - 1.
function signExtend(pixels, stored) {
  const shift = 32 - stored;
  for (let i = 0; i < pixels.length; i++) pixels[i] = (pixels[i] << shift) >> shift;
}

// The image's own window, or its full range when it names none.
export function defaultWindow(image) {
  if (Number.isFinite(image.center) && image.width_ > 0) return { center: image.center, width: image.width_ };
  return { center: (image.max + image.min) / 2, width: Math.max(1, image.max - image.min) };
}

// Paints stored values into `out` (an ImageData of the image's size) through a linear VOI window: a lookup table
// from each stored value present (storedMin..storedMax) to its opaque grey RGBA word, then one load and one store a
// pixel. Per pixel arithmetic took 1.2 ms a 512² slice here, most of what a step through loaded slices costs.
export function applyWindow(image, win, out) {
  const { pixels, slope, intercept, invert, storedMin, storedMax } = image;
  const low = win.center - win.width / 2;
  const scale = 255 / win.width;
  const lut = new Uint32Array(storedMax - storedMin + 1);
  const grey = new Uint8ClampedArray(1); // rounds and clamps as writing into ImageData would
  for (let v = storedMin, k = 0; v <= storedMax; v++, k++) {
    grey[0] = ((v * slope + intercept) - low) * scale;
    const g = invert ? 255 - grey[0] : grey[0];
    lut[k] = LITTLE_ENDIAN ? (0xff000000 | (g << 16) | (g << 8) | g) >>> 0 : ((g << 24) | (g << 16) | (g << 8) | 0xff) >>> 0;
  }
  const words = new Uint32Array(out.data.buffer, out.data.byteOffset, pixels.length);
  for (let i = 0; i < pixels.length; i++) words[i] = lut[pixels[i] - storedMin];
}

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
