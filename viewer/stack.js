// One series as a stack of frames: loading with preloading around the current image, and painting with
// window/level applied in the browser (no round trip per change, so a drag stays well under 100 ms).
import { value } from './dicomweb.js';

const PRELOAD = 6; // images loaded ahead and behind the current one
const KEEP = 160; // frames kept in memory; the farthest from the current one go first
const PARALLEL = 4;

export class Stack {
  constructor(api, seriesUid, metadata) {
    this.api = api;
    this.seriesUid = seriesUid;
    this.frames = [];
    const sorted = [...metadata].sort((a, b) => value(a, '00200013', 0) - value(b, '00200013', 0));
    for (const item of sorted) {
      const count = Number(value(item, '00280008', 1)) || 1;
      for (let f = 1; f <= count; f++) this.frames.push({ item, frame: f, uid: value(item, '00080018') });
    }
    this.cache = new Map(); // index → Promise<image>
    this.loaded = new Set(); // indices whose image is in memory
    this.queue = [];
    this.active = 0;
    this.onprogress = () => {};
  }

  get length() {
    return this.frames.length;
  }

  // The image at `index`, loaded now if it is not already on its way.
  image(index) {
    let promise = this.cache.get(index);
    if (!promise) {
      promise = new Promise((resolve, reject) => this.queue.unshift({ index, resolve, reject }));
      this.cache.set(index, promise);
      promise.then(() => { if (this.cache.get(index) === promise) this.loaded.add(index); this.onprogress(); },
        () => this.cache.delete(index));
      this.pump();
    }
    return promise;
  }

  preload(center) {
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
      this.load(this.frames[job.index]).then(job.resolve, job.reject).finally(() => { this.active--; this.pump(); });
    }
  }

  async load({ item, frame, uid }) {
    const rows = value(item, '00280010'), cols = value(item, '00280011');
    const photometric = value(item, '00280004', 'MONOCHROME2');
    if (value(item, '00280002', 1) !== 1 || !photometric.startsWith('MONOCHROME')) {
      // Colour: the server renders it; window/level does not apply.
      const bitmap = await this.api.renderedFrame(this.seriesUid, uid, frame);
      return { kind: 'bitmap', bitmap, width: bitmap.width, height: bitmap.height };
    }
    const buffer = await this.api.rawFrame(this.seriesUid, uid, frame);
    const bits = value(item, '00280100', 16), signed = value(item, '00280103', 0) === 1;
    const Type = bits === 8 ? (signed ? Int8Array : Uint8Array) : (signed ? Int16Array : Uint16Array);
    const pixels = new Type(buffer, 0, rows * cols);
    const slope = Number(value(item, '00281053', 1)), intercept = Number(value(item, '00281052', 0));
    let min = Infinity, max = -Infinity;
    for (let i = 0; i < pixels.length; i++) { const v = pixels[i]; if (v < min) min = v; if (v > max) max = v; }
    return {
      kind: 'gray', pixels, width: cols, height: rows, slope, intercept,
      invert: photometric === 'MONOCHROME1',
      min: min * slope + intercept, max: max * slope + intercept,
      center: Number(value(item, '00281050')), width_: Number(value(item, '00281051')),
    };
  }
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
