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
// Below this, a transfer's time is mostly the box's gap between writing the headers and the body (~1 ms on loopback:
// an 18 kB frame looked like 12 MB/s). A compressed CT slice (JPEG-LS 512²: ~170 kB) still counts, so a link judged
// slow is timed again once its frames come compressed.
const MIN_BYTES = 65536;
// One frame timed is not a judgement: the link is unknown (fast, frames as stored) until this many are.
const MIN_TRANSFERS = 4;
const REMEMBERED_FOR_MS = 8 * 3600 * 1000; // a working day at the same place; then the link is measured afresh
const KEY = 'drimbox.link.bytesPerMs';

export class LinkMeter {
  // `store`: where the last figure is kept between visits (a reopen asks the same way, and so hits the HTTP cache,
  // which varies on Accept); `match`: which resources are frames.
  constructor(store = safeStorage(), match = (name) => name.includes('/frames/')) {
    this.store = store;
    this.match = match;
    this.transfers = []; // [start, end, bytes] of the latest frames, by the network stack's clock
    const [kept, at] = String(store?.getItem(KEY) || '').split(' ').map(Number);
    this.remembered = kept > 0 && Date.now() - at < REMEMBERED_FOR_MS ? kept : null;
    this.observer = null;
    this.storedAt = 0; // when the rate was last remembered (Date.now())
    this.onchange = () => {}; // called with `slow` after each answer timed (the page shows it for the tests)
    if (typeof PerformanceObserver === 'function') {
      this.observer = new PerformanceObserver((list) => this.record(list.getEntries()));
      try {
        this.observer.observe({ type: 'resource', buffered: true });
      } catch {
        this.observer = null; // an old browser: the link is then never judged slow, frames come as before
      }
    }
  }

  // Before each frame is asked and after its body is read: the latest timings are usually queued already, and the
  // next request should know them now rather than when the observer's callback runs (a low-priority task, after the
  // queued frames have been sent).
  poll() {
    if (this.observer) this.record(this.observer.takeRecords());
  }

  record(entries) {
    for (const e of entries) {
      // From the HTTP cache or a 304, no body was on the wire (transferSize counts headers only then).
      if (!this.match(e.name) || e.transferSize < e.encodedBodySize || e.encodedBodySize < MIN_BYTES) continue;
      // A body that came whole within the clock's resolution (coarsened to 0.1 ms) was as fast as it can tell.
      this.transfers.push([e.responseStart, Math.max(e.responseEnd, e.responseStart + 0.1), e.encodedBodySize]);
    }
    if (this.transfers.length > WINDOW) this.transfers.splice(0, this.transfers.length - WINDOW);
    const rate = this.bytesPerMs;
    if (rate === null) return;
    // Remembered for the next visit at most once a second: localStorage writes are synchronous, and a scroll
    // through loaded frames records one answer per step.
    const now = Date.now();
    if (this.transfers.length >= MIN_TRANSFERS && now - this.storedAt >= 1000) {
      this.storedAt = now;
      this.store?.setItem(KEY, `${Math.round(rate)} ${now}`);
    }
    this.onchange(this.slow);
  }

  // Bytes a millisecond over the latest frames; before enough of them, the last visit's figure (a reopen then asks
  // as the last visit did, and its frames are in the HTTP cache under that Accept); null when nothing is known. (No
  // other answer is a guide: the metadata, compressed while it is sent, made loopback look slow when tried.)
  //
  // The fastest quarter of the frames (each by its own rate), their bytes over the union of their transfer times.
  // The union, because frames share the link: each one's own time is longer than the link needs for it. The fastest
  // ones, because no set of frames can cross a link faster than the link, while a busy browser reading one late (the
  // page starting, a decode, a loaded machine) only ever makes it look slower: measured on a loaded 2-core machine,
  // the page's first three 128 KiB frames took 6-37 ms each on loopback (3-22 MB/s), the next ones 0.5-7 ms.
  get bytesPerMs() {
    if (this.transfers.length < MIN_TRANSFERS) return this.remembered;
    const rate = ([s, e, n]) => n / (e - s);
    const faster = [...this.transfers].sort((a, b) => rate(b) - rate(a)).slice(0, Math.ceil(this.transfers.length / 4));
    return unionRate(faster);
  }

  // Unknown counts as fast: the first frames come as stored, costing the box nothing, and tell.
  get slow() {
    const rate = this.bytesPerMs;
    return rate !== null && rate < SLOW_BELOW_BYTES_PER_MS;
  }
}

// Bytes a millisecond of transfers [start, end, bytes] over the time at least one of them was under way.
function unionRate(transfers) {
  const spans = [...transfers].sort((a, b) => a[0] - b[0]);
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

function safeStorage() {
  try {
    return globalThis.localStorage ?? null;
  } catch {
    return null; // storage disabled by policy: the link is measured afresh at each visit
  }
}
