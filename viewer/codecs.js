// Compressed frames decoded in a small pool of Web Workers (decode-worker.js) with vendored WebAssembly codecs.
// The transfer syntaxes listed here are the ones the viewer asks for as stored (dicomweb.js frameAccept).

// Through the page's import map when it has one: the worker's versioned URL, cached until the worker changes.
const WORKER = typeof import.meta.resolve === 'function' ? import.meta.resolve('./decode-worker.js')
  : new URL('decode-worker.js', import.meta.url).href;
const JPEG_LS = ['1.2.840.10008.1.2.4.80', '1.2.840.10008.1.2.4.81']; // lossless, near-lossless
const JPEG_2000 = ['1.2.840.10008.1.2.4.90', '1.2.840.10008.1.2.4.91']; // lossless only, lossy or lossless
// Below two cores one worker still keeps decoding off the page's thread; above, leave a core to the page.
const SIZE = Math.max(1, Math.min(4, (navigator.hardwareConcurrency || 2) - 1));

const supported = typeof Worker === 'function' && typeof WebAssembly === 'object';
// Emptied when a worker cannot start (no WebAssembly, a CSP refusing it): frames are then asked uncompressed.
export const decodable = new Set(supported ? [...JPEG_LS, ...JPEG_2000] : []);

const workers = []; // { worker, busy }
const pending = new Map(); // job id → { resolve, reject, slot }
let nextId = 1;
let failures = 0; // in a row: a codec that cannot even start fails every frame, and each costs a second request
const GIVE_UP_AFTER = 3;

function spawn() {
  const slot = { worker: new Worker(WORKER), busy: 0 };
  slot.worker.onmessage = ({ data }) => {
    const job = pending.get(data.id);
    if (!job) return;
    pending.delete(data.id);
    slot.busy--;
    if (data.error) {
      if (++failures >= GIVE_UP_AFTER) decodable.clear();
      job.reject(new Error(data.error));
      return;
    }
    failures = 0;
    // The worker's own decoding time (queueing aside), for the perf suite: performance entries named 'decode'.
    const end = performance.now();
    performance.measure('decode', { start: end - data.ms, end });
    job.resolve(data);
  };
  slot.worker.onerror = (event) => {
    event.preventDefault();
    decodable.clear();
    for (const [id, job] of pending) {
      if (job.slot !== slot) continue;
      pending.delete(id);
      job.reject(new Error('decoder worker failed'));
    }
    slot.busy = 0;
  };
  workers.push(slot);
  return slot;
}

function leastBusy() {
  const idle = workers.find((w) => w.busy === 0);
  if (idle) return idle;
  if (workers.length < SIZE) return spawn();
  return workers.reduce((a, b) => (b.busy < a.busy ? b : a));
}

// A worker started, and the JPEG-LS codec fetched and compiled in it, while the page waits for a cold study's lists:
// the first frame then only decodes (starting both on that frame took 60-80 ms of the first image, on a 1300-slice
// CT whose list takes the PACS 0.7 s). JPEG-LS: the lossless syntax of the studies DRIM-M exchanges; another codec
// still loads on its first frame. The codec files are cached for a year: a warm-up costs a download once.
export function warmUp() {
  if (!decodable.size || workers.length) return;
  spawn().worker.postMessage({ warm: JPEG_LS[0] });
}

// The frame's stored values (little endian, as native Pixel Data would hold them) from its compressed bitstream.
export function decode(syntax, buffer) {
  const slot = leastBusy();
  const id = nextId++;
  slot.busy++;
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject, slot });
    slot.worker.postMessage({ id, syntax, buffer }, [buffer]);
  });
}
