// A Web Worker decoding compressed frames with the vendored WebAssembly codecs, off the page's thread.
// A classic worker: the codecs are Emscripten UMD scripts, loaded with importScripts (no build step).
'use strict';

// Each codec: its folder, its script, the factory the script defines and the decoder class it exports. A worker
// loads only the codecs its frames need, on the first frame of each.
const CHARLS = { folder: 'vendor/codec-charls@1.2.7/', script: 'charlswasm_decode.js', factory: 'CharLSWASM', decoder: 'JpegLSDecoder' };
const OPENJPEG = { folder: 'vendor/codec-openjpeg@1.3.6/', script: 'openjpegwasm_decode.js', factory: 'OpenJPEGWASM', decoder: 'J2KDecoder' };
const modules = new Map(); // codec → Promise of its module

function load(codec) {
  if (!modules.has(codec)) {
    importScripts(codec.folder + codec.script);
    // The .wasm lies beside its script, not beside this worker (Emscripten looks next to the worker by default).
    modules.set(codec, self[codec.factory]({ locateFile: (file) => codec.folder + file }));
  }
  return modules.get(codec);
}

async function decodeWith(codec, bytes) {
  const module = await load(codec);
  const decoder = new module[codec.decoder]();
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

const DECODERS = {
  '1.2.840.10008.1.2.4.90': OPENJPEG,
  '1.2.840.10008.1.2.4.91': OPENJPEG,
  '1.2.840.10008.1.2.4.80': CHARLS,
  '1.2.840.10008.1.2.4.81': CHARLS,
};

self.onmessage = async (event) => {
  if (event.data.warm) {
    // Load (fetch and compile) the codec now; any failure shows again on the first real frame, and is told then.
    try {
      if (DECODERS[event.data.warm]) load(DECODERS[event.data.warm]).catch(() => {});
    } catch {
      // a script that cannot load: the first frame tries again, and its failure is told
    }
    return;
  }
  const { id, syntax, buffer } = event.data;
  try {
    const codec = DECODERS[syntax];
    if (!codec) throw new Error(`no decoder for ${syntax}`);
    const started = performance.now();
    const result = await decodeWith(codec, new Uint8Array(buffer));
    self.postMessage({ id, ...result, ms: performance.now() - started }, [result.buffer]);
  } catch (error) {
    self.postMessage({ id, error: String((error && error.message) || error) });
  }
};
