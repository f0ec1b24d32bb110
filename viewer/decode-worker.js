// A Web Worker decoding compressed frames with the vendored WebAssembly codecs, off the page's thread.
// A classic worker: the codecs are Emscripten UMD scripts, loaded with importScripts (no build step).
'use strict';

const CHARLS = 'vendor/codec-charls@1.2.7/';
const OPENJPEG = 'vendor/codec-openjpeg@1.3.6/';
let charls = null; // Promise of the JPEG-LS module, started on the first JPEG-LS frame
let openjpeg = null; // the same for JPEG 2000: a worker loads only the codecs its frames need

function jpegLs() {
  if (!charls) {
    importScripts(`${CHARLS}charlswasm_decode.js`);
    // The .wasm lies beside its script, not beside this worker (Emscripten looks next to the worker by default).
    charls = CharLSWASM({ locateFile: (file) => CHARLS + file });
  }
  return charls;
}

async function decodeJpegLs(bytes) {
  const codec = await jpegLs();
  const decoder = new codec.JpegLSDecoder();
  try {
    decoder.getEncodedBuffer(bytes.length).set(bytes);
    decoder.decode();
    const info = decoder.getFrameInfo();
    // Copied out of the codec's memory, which delete() frees.
    const pixels = decoder.getDecodedBuffer().slice();
    return { buffer: pixels.buffer, width: info.width, height: info.height, bits: info.bitsPerSample };
  } finally {
    decoder.delete();
  }
}

function jpeg2000() {
  if (!openjpeg) {
    importScripts(`${OPENJPEG}openjpegwasm_decode.js`);
    openjpeg = OpenJPEGWASM({ locateFile: (file) => OPENJPEG + file });
  }
  return openjpeg;
}

async function decodeJpeg2000(bytes) {
  const codec = await jpeg2000();
  const decoder = new codec.J2KDecoder();
  try {
    decoder.getEncodedBuffer(bytes.length).set(bytes);
    decoder.decode();
    const info = decoder.getFrameInfo();
    const pixels = decoder.getDecodedBuffer().slice();
    return { buffer: pixels.buffer, width: info.width, height: info.height, bits: info.bitsPerSample };
  } finally {
    decoder.delete();
  }
}

const DECODERS = {
  '1.2.840.10008.1.2.4.90': decodeJpeg2000,
  '1.2.840.10008.1.2.4.91': decodeJpeg2000,
  '1.2.840.10008.1.2.4.80': decodeJpegLs,
  '1.2.840.10008.1.2.4.81': decodeJpegLs,
};

self.onmessage = async (event) => {
  const { id, syntax, buffer } = event.data;
  try {
    const decode = DECODERS[syntax];
    if (!decode) throw new Error(`no decoder for ${syntax}`);
    const started = performance.now();
    const result = await decode(new Uint8Array(buffer));
    self.postMessage({ id, ...result, ms: performance.now() - started }, [result.buffer]);
  } catch (error) {
    self.postMessage({ id, error: String((error && error.message) || error) });
  }
};
