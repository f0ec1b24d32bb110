// How fast frames arrive over this link, to decide whether to ask the box for them compressed (dicomweb.js).
//
// Measured by the browser's network stack (Resource Timing: first byte to last byte of each frame's body), not by
// the page: a busy main thread decoding or painting would make a LAN look slow. Frames load 4 at a time, sharing
// the link: the throughput is their bytes over the union of their transfer times, not each one's own. The time
// before the first byte (the box reading or retrieving the image) is not the link's and is left out.

// Below this, a third of the bytes (JPEG-LS lossless of a CT) is worth the box's ~6 ms of CPU a 512² slice and the
// browser's decode: 20 MB/s (160 Mbit/s) sits between a hospital's 100 Mbit/s and a LAN's gigabit.
export const SLOW_BELOW_BYTES_PER_MS = 20_000;
const WINDOW = 16; // the latest frames measured: a link that changes (Wi-Fi to 4G) is followed within a few frames
const MIN_BYTES = 65536; // below this a transfer is a few packets: on a LAN its time is mostly clock granularity
const KEY = 'drimbox.link.bytesPerMs';

export class LinkMeter {
  // `store`: where the last figure is kept between visits (a reopen asks the same way, and so hits the HTTP cache,
  // which varies on Accept); `match`: which resources are frames.
  constructor(store = safeStorage(), match = (name) => name.includes('/frames/')) {
    this.store = store;
    this.match = match;
    this.transfers = []; // [start, end, bytes] of the latest frames, by the network stack's clock
    const kept = Number(store?.getItem(KEY));
    this.remembered = kept > 0 ? kept : null;
    this.observer = null;
    this.onchange = () => {}; // called with `slow` after each frame measured (the page shows it for the tests)
    if (typeof PerformanceObserver === 'function') {
      this.observer = new PerformanceObserver((list) => this.record(list.getEntries()));
      try {
        this.observer.observe({ type: 'resource', buffered: true });
      } catch {
        this.observer = null; // an old browser: the link is then never judged slow, frames come as before
      }
    }
  }

  // A frame's body has been read: its timing is usually queued already, and the next request should know it now
  // rather than when the observer's callback runs (a low-priority task, after the queued frames have been sent).
  poll() {
    if (this.observer) this.record(this.observer.takeRecords());
  }

  record(entries) {
    for (const e of entries) {
      // A frame from the HTTP cache or a 304 has no body on the wire (transferSize counts headers only then).
      if (!this.match(e.name) || e.encodedBodySize < MIN_BYTES || e.transferSize < e.encodedBodySize) continue;
      // A body that came whole within the clock's resolution (coarsened to 0.1 ms) was as fast as it can tell.
      this.transfers.push([e.responseStart, Math.max(e.responseEnd, e.responseStart + 0.1), e.encodedBodySize]);
    }
    if (this.transfers.length > WINDOW) this.transfers.splice(0, this.transfers.length - WINDOW);
    const rate = this.bytesPerMs;
    if (rate === null) return;
    this.store?.setItem(KEY, String(Math.round(rate)));
    this.onchange(this.slow);
  }

  // Bytes a millisecond over the latest frames, the last visit's figure before any, or null when nothing is known.
  get bytesPerMs() {
    if (!this.transfers.length) return this.remembered;
    const spans = [...this.transfers].sort((a, b) => a[0] - b[0]);
    let busy = 0, bytes = 0, start = -Infinity, end = -Infinity;
    for (const [s, e, n] of spans) {
      bytes += n;
      if (s > end) {
        busy += end - start > 0 ? end - start : 0;
        start = s;
      }
      end = Math.max(end, e);
    }
    busy += end - start;
    return busy > 0 ? bytes / busy : null;
  }

  // Unknown counts as fast: the first frames come as stored, costing the box nothing, and tell.
  get slow() {
    const rate = this.bytesPerMs;
    return rate !== null && rate < SLOW_BELOW_BYTES_PER_MS;
  }
}

function safeStorage() {
  try {
    return globalThis.localStorage ?? null;
  } catch {
    return null; // storage disabled by policy: the link is measured afresh at each visit
  }
}
