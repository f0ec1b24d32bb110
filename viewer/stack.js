// One series as a stack of frames: loading with preloading around the current image, and painting with
// window/level applied in the browser (no round trip per change, so a drag stays well under 100 ms).
import { NATIVE, value } from './dicomweb.js';
import { decodable, decode } from './codecs.js';

const PRELOAD = 6; // images loaded ahead and behind the current one
const KEEP = 160; // frames kept in memory; the farthest from the current one go first
const PARALLEL = 4;
// A link where an exact frame takes longer than this (smoothed over the frames so far) is slow: the image the user
// waits for comes first as a small lossy JPEG rendered by the box, then the exact frame replaces it.
const PREVIEW_AFTER_MS = 300;
const PREVIEW_QUALITY = 60;

// The stack's order: InstanceNumber, multi-frame instances expanded into their frames.
function framesOf(items) {
  const frames = [];
  const sorted = [...items].sort((a, b) => value(a, '00200013', 0) - value(b, '00200013', 0));
  for (const item of sorted) {
    const count = Number(value(item, '00280008', 1)) || 1;
    for (let f = 1; f <= count; f++) frames.push({ uid: value(item, '00080018'), frame: f, key: `${value(item, '00080018')}/${f}` });
  }
  return frames;
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
    this.queue = [];
    this.active = 0;
    this.onprogress = () => {};
    this.exactMs = null; // smoothed time an exact frame takes to arrive and decode
    this.previews = new Map(); // index → Promise<ImageBitmap> of its lossy preview
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
      const cache = new Map(), loaded = new Set();
      for (const [i, promise] of this.cache) {
        const j = position.get(this.frames[i].key);
        if (j === undefined) continue;
        cache.set(j, promise);
        if (this.loaded.has(i)) loaded.add(j);
      }
      moved = Math.max(0, position.get(this.frames[index]?.key) ?? Math.min(index, frames.length - 1));
      Object.assign(this, { frames, cache, loaded });
    }
    if (this.preloadAt !== null) this.preload(moved);
    return moved;
  }

  // The image at `index`, loaded now if it is not already on its way.
  image(index) {
    let promise = this.cache.get(index);
    if (!promise) {
      const frame = this.frames[index];
      promise = new Promise((resolve, reject) => this.queue.unshift({ frame, resolve, reject }));
      this.cache.set(index, promise);
      promise.then(() => {
        const at = this.frames.findIndex((f) => f.key === frame.key); // a rebuild may have moved it
        if (at >= 0 && this.cache.get(at) === promise) this.loaded.add(at);
        if (at >= 0) this.previews.delete(at);
        this.onprogress();
      }, () => { for (const [i, p] of this.cache) if (p === promise) this.cache.delete(i); });
      this.pump();
    }
    return promise;
  }

  // Neighbours only once the series' metadata is there: before that each would cost a metadata request of its own,
  // and on a cold box they would compete with the first image for the same retrieve.
  preload(center) {
    if (!this.isComplete) {
      this.preloadAt = center;
      return;
    }
    this.preloadAt = null;
    for (let d = PRELOAD; d >= 1; d--) {
      for (const i of [center + d, center - d]) if (i >= 0 && i < this.length) this.image(i).catch(() => {});
    }
    this.evict(center);
  }

  evict(center) {
    if (this.cache.size <= KEEP) return;
    const far = [...this.cache.keys()].sort((a, b) => Math.abs(b - center) - Math.abs(a - center));
    for (const i of far.slice(0, this.cache.size - KEEP)) { this.cache.delete(i); this.loaded.delete(i); }
  }

  pump() {
    while (this.active < PARALLEL && this.queue.length) {
      const job = this.queue.shift();
      this.active++;
      this.load(job.frame).then(job.resolve, job.reject).finally(() => { this.active--; this.pump(); });
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
  async pixels(uid, frame) {
    const started = performance.now();
    const got = await this.api.frame(this.seriesUid, uid, frame, decodable);
    if (got.syntax === NATIVE) return this.timed(started, got);
    try {
      const decoded = await decode(got.syntax, got.buffer);
      return this.timed(started, { syntax: got.syntax, buffer: decoded.buffer });
    } catch (error) {
      console.warn(`frame decode failed (${got.syntax}): ${error.message}`);
      const again = await this.api.frame(this.seriesUid, uid, frame, []);
      return { syntax: again.syntax, buffer: again.buffer };
    }
  }

  timed(started, result) {
    const ms = performance.now() - started;
    this.exactMs = this.exactMs === null ? ms : 0.7 * this.exactMs + 0.3 * ms;
    return result;
  }

  async load({ uid, frame }) {
    let item = this.metadata.get(uid);
    let raw = null;
    if (!item) {
      // The frame is asked alongside the metadata (not after it): one round trip, not two. Grayscale is by far
      // the common case; a colour image throws this answer away and asks for the rendered one.
      raw = this.pixels(uid, frame);
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
    const { syntax, buffer } = await (raw || this.pixels(uid, frame));
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
      invert: photometric === 'MONOCHROME1',
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

// Paints stored values into `out` (an ImageData of the image's size) through a linear VOI window.
export function applyWindow(image, win, out) {
  const { pixels, slope, intercept, invert } = image;
  const low = win.center - win.width / 2;
  const scale = 255 / win.width;
  const data = out.data;
  for (let i = 0, j = 0; i < pixels.length; i++, j += 4) {
    let g = ((pixels[i] * slope + intercept) - low) * scale;
    g = g < 0 ? 0 : g > 255 ? 255 : g;
    if (invert) g = 255 - g;
    data[j] = data[j + 1] = data[j + 2] = g;
    data[j + 3] = 255;
  }
}
