// The few DICOMweb calls the viewer makes, same-origin, with the consumer's KOS on every request.

export class HttpError extends Error {
  constructor(status, url) {
    super(`HTTP ${status}`);
    this.status = status;
    this.url = url;
  }
}

// Uncompressed little endian: the frame arrives as the stored values, so window/level runs in the browser.
export const NATIVE = '1.2.840.10008.1.2.1';
// A box's QIDO page size by default (DICOMweb servers commonly answer 1000 at most), and how many pages are read.
const PAGE = 1000;
const MAX_PAGES = 100;
const RAW_FRAME = `multipart/related; type="application/octet-stream"; transfer-syntax=${NATIVE}`;
const PIXEL_MEDIA = {
  '1.2.840.10008.1.2.4.80': 'image/jls',
  '1.2.840.10008.1.2.4.81': 'image/jls',
  '1.2.840.10008.1.2.4.90': 'image/jp2',
  '1.2.840.10008.1.2.4.91': 'image/jp2',
};

// The syntaxes the viewer decodes (PS3.18 8.7.3: the box sends those as stored, never decoding them), then
// uncompressed: the box decodes only what the browser cannot. On a fast link all at the same weight, which leaves the
// choice to the box: uncompressed data goes as stored, no box CPU spent. On a slow link (`compressed`) uncompressed
// weighs less, and a box with `compress_on_the_fly = "auto"` encodes JPEG-LS lossless (a third of the bytes) for it;
// a compressed study still comes as stored (the box never re-encodes one lossless syntax into another for this).
export function frameAccept(syntaxes, compressed = false) {
  const ranges = [...syntaxes].map((ts) => `multipart/related; type="${PIXEL_MEDIA[ts]}"; transfer-syntax=${ts}`);
  return [...ranges, ranges.length && compressed ? `${RAW_FRAME}; q=0.5` : RAW_FRAME].join(', ');
}

export class Dicomweb {
  constructor(base, study, kos, link = null) {
    this.base = base;
    this.study = study;
    this.kos = kos;
    this.link = link; // a LinkMeter (link.js): frames are asked compressed while it says the link is slow
    // A series' frames are asked the fast-link way until one has arrived: if it came compressed, the series is stored
    // so (`asStored`) and goes as stored whatever the link, so it is asked that way for good: the HTTP cache varies on
    // Accept, and a reopen on a link judged otherwise would miss every frame. Uncompressed (`seen`): the link decides.
    this.seen = new Set();
    this.asStored = new Set();
  }

  url(path) {
    return `${this.base}/studies/${encodeURIComponent(this.study)}${path}`;
  }

  // The KOS rides in a header where we can set one: QIDO reads every query parameter as a search key.
  async fetch(url, accept, signal = undefined, extra = {}) {
    const headers = { Accept: accept, ...extra };
    if (this.kos) headers['KOS-SOPInstanceUID'] = this.kos;
    const resp = await fetch(url, { headers, credentials: 'same-origin', signal });
    if (!resp.ok) throw new HttpError(resp.status, url);
    return resp;
  }

  async json(path, signal = undefined, extra = {}) {
    return (await this.fetch(this.url(path), 'application/dicom+json', signal, extra)).json();
  }

  series() {
    return this.json('/series');
  }

  studyMetadata(cachedOnly = false) {
    return this.json('/metadata', undefined, cachedOnly ? { 'Cache-Control': 'only-if-cached' } : {});
  }

  // cachedOnly: a Proxy box answers 504 at once rather than retrieve a series it does not hold (RFC 9111).
  seriesMetadata(seriesUid, cachedOnly = false) {
    const extra = cachedOnly ? { 'Cache-Control': 'only-if-cached' } : {};
    return this.json(`/series/${encodeURIComponent(seriesUid)}/metadata`, undefined, extra);
  }

  // QIDO: enough to order the stack (a C-FIND on a Proxy box: no need to wait for the images themselves), every
  // page of it: a box answers at most its limit (1000 by default) with a Warning saying more exist. When the series
  // list has said how many instances there are (`expected`), the pages past the first are asked alongside it: a
  // Proxy box answers them all from its one C-FIND, each as its answers arrive. A box whose pages are smaller than
  // PAGE is then read on page by page, as any box without the count.
  async instances(seriesUid, signal, expected = 0) {
    const path = `/series/${encodeURIComponent(seriesUid)}/instances?includefield=00200013,00280008,00200032,00200037`;
    const ask = async (offset) => {
      const resp = await this.fetch(this.url(`${path}&offset=${offset}`), 'application/dicom+json', signal);
      if (resp.status === 204) return { rows: [], more: false };
      const rows = await resp.json();
      return { rows, more: rows.length > 0 && /additional results/i.test(resp.headers.get('Warning') || '') };
    };
    const ahead = [];
    for (let offset = PAGE; offset < Math.min(expected, PAGE * MAX_PAGES); offset += PAGE) ahead.push(ask(offset));
    for (const page of ahead) page.catch(() => {}); // those not needed may fail unseen
    const all = [];
    let page = await ask(0);
    for (let n = 0; n < MAX_PAGES; n++) {
      all.push(...page.rows);
      if (!page.more) break;
      page = await (n < ahead.length && all.length === PAGE * (n + 1) ? ahead[n] : ask(all.length));
    }
    return all;
  }

  instanceMetadata(seriesUid, instanceUid) {
    return this.json(`${this.instancePath(seriesUid, instanceUid)}/metadata`);
  }

  instancePath(seriesUid, instanceUid) {
    return `/series/${encodeURIComponent(seriesUid)}/instances/${encodeURIComponent(instanceUid)}`;
  }

  // An <img> cannot send headers: the KOS goes in the query here.
  thumbnailUrl(seriesUid) {
    const kos = this.kos ? `&kos=${encodeURIComponent(this.kos)}` : '';
    return this.url(`/series/${encodeURIComponent(seriesUid)}/thumbnail?viewport=128,128${kos}`);
  }

  // One frame as {syntax, buffer}: the stored bitstream when `syntaxes` (what the browser decodes) holds its
  // syntax, else native little-endian values. `bytes` counts what frames cost on the wire, for the perf suite.
  async frame(seriesUid, instanceUid, frame, syntaxes, signal = undefined) {
    const url = this.url(`${this.instancePath(seriesUid, instanceUid)}/frames/${frame}`);
    this.link?.poll();
    const slow = Boolean(this.link?.slow) && this.seen.has(seriesUid) && !this.asStored.has(seriesUid);
    const resp = await this.fetch(url, frameAccept(syntaxes, slow), signal);
    const part = parts(resp.headers.get('Content-Type') || '', await resp.arrayBuffer());
    this.frameBytes = (this.frameBytes || 0) + part.body.byteLength;
    this.link?.poll();
    const syntax = /transfer-syntax=\s*"?([0-9.]+)/i.exec(part.type)?.[1] || NATIVE;
    if (!slow && !this.seen.has(seriesUid) && syntax !== NATIVE) this.asStored.add(seriesUid);
    this.seen.add(seriesUid);
    return { syntax, buffer: part.body };
  }

  async rawFrame(seriesUid, instanceUid, frame) {
    const resp = await this.fetch(this.url(`${this.instancePath(seriesUid, instanceUid)}/frames/${frame}`), RAW_FRAME);
    return firstPart(resp.headers.get('Content-Type') || '', await resp.arrayBuffer());
  }

  async renderedFrame(seriesUid, instanceUid, frame, accept = 'image/png', params = null) {
    const query = params ? `?${params}` : '';
    const path = `${this.instancePath(seriesUid, instanceUid)}/frames/${frame}/rendered${query}`;
    const resp = await this.fetch(this.url(path), accept);
    return createImageBitmap(await resp.blob());
  }
}

// The body of the first part of a multipart/related answer (one frame asked, one part back).
export function firstPart(contentType, buffer) {
  return parts(contentType, buffer).body;
}

// The first part's Content-Type and body; a single-part answer is the frame itself, typed by the response.
function parts(contentType, buffer) {
  const match = /boundary="?([^";]+)"?/i.exec(contentType);
  if (!match) return { type: contentType, body: buffer };
  const bytes = new Uint8Array(buffer);
  const start = indexOf(bytes, ascii('\r\n\r\n'), 0) + 4;
  const end = lastIndexOf(bytes, ascii(`\r\n--${match[1]}`), start);
  if (start < 4 || end < 0) throw new Error('malformed multipart answer');
  const head = new TextDecoder('latin1').decode(bytes.subarray(0, start));
  const type = /^content-type:\s*(.*)$/im.exec(head)?.[1] || '';
  return { type, body: buffer.slice(start, end) };
}

function ascii(text) {
  return Uint8Array.from(text, (c) => c.charCodeAt(0));
}

function indexOf(haystack, needle, from) {
  outer: for (let i = from; i <= haystack.length - needle.length; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

// Searched from the end: the closing boundary is there, and pixel bytes could by chance look like one.
function lastIndexOf(haystack, needle, from) {
  outer: for (let i = haystack.length - needle.length; i >= from; i--) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

// DICOM JSON helpers: the first value of a tag, or a fallback.
export function value(item, tag, fallback = undefined) {
  const v = item?.[tag]?.Value;
  return v && v.length ? v[0] : fallback;
}

// Enough to recognise the patient on screen, not enough to copy the national identifier.
export function maskIns(ins) {
  if (ins.length < 6) return '•••';
  return ins.slice(0, 1) + '•'.repeat(ins.length - 4) + ins.slice(-3);
}

export function personName(item, tag) {
  const v = value(item, tag);
  return (v && (v.Alphabetic || '')).replace(/\^+/g, ' ').trim();
}
