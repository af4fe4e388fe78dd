// AudioWorklet: microphone audio at the context's rate -> 16 kHz mono linear16, posted in 20 ms chunks.
//
// Resampling is a windowed-sinc low-pass interpolator (cut-off at 90 % of 8 kHz, Blackman window,
// 8 zero crossings a side), with each output normalised by the sum of its taps so a constant input
// stays exactly constant. At 16 kHz input the audio passes through untouched.
"use strict";

const OUT_RATE = 16000;
const CHUNK = 320; // 20 ms of output
const ZEROS = 8; // zero crossings of the sinc on each side
const RES = 512; // kernel table entries per input sample

class Capture16k extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / OUT_RATE; // input samples per output sample
    this.passthrough = sampleRate === OUT_RATE;
    const fc = 0.5 * Math.min(1, OUT_RATE / sampleRate) * 0.9; // cycles per input sample
    this.half = ZEROS / (2 * fc); // kernel half-width in input samples
    const n = Math.ceil(this.half * RES);
    this.kernel = new Float64Array(2 * n + 1);
    for (let i = -n; i <= n; i++) {
      const u = i / RES;
      const x = 2 * fc * u;
      const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
      const w = Math.abs(u) >= this.half ? 0 : 0.42 + 0.5 * Math.cos((Math.PI * u) / this.half) + 0.08 * Math.cos((2 * Math.PI * u) / this.half);
      this.kernel[i + n] = 2 * fc * sinc * w;
    }
    this.kn = n;
    this.buf = new Float32Array(16384);
    this.bufStart = 0; // absolute index of buf[0]
    this.bufLen = 0;
    this.produced = 0; // output samples so far: the next one sits at input position produced * step
    this.out = new Int16Array(CHUNK);
    this.outLen = 0;
  }

  emit(y) {
    const s = Math.round(y * 32768);
    this.out[this.outLen++] = s > 32767 ? 32767 : s < -32768 ? -32768 : s;
    if (this.outLen === CHUNK) {
      this.port.postMessage(this.out.buffer, [this.out.buffer]);
      this.out = new Int16Array(CHUNK);
      this.outLen = 0;
    }
  }

  append(samples) {
    if (this.bufLen + samples.length > this.buf.length) {
      const bigger = new Float32Array(Math.max(this.buf.length * 2, this.bufLen + samples.length));
      bigger.set(this.buf.subarray(0, this.bufLen));
      this.buf = bigger;
    }
    this.buf.set(samples, this.bufLen);
    this.bufLen += samples.length;
  }

  resample() {
    const { buf, kernel, kn, half, step } = this;
    const end = this.bufStart + this.bufLen; // absolute index one past the last input sample
    for (;;) {
      const t = this.produced * step;
      if (t + half >= end - 1) break;
      const k0 = Math.max(this.bufStart, Math.ceil(t - half));
      const k1 = Math.floor(t + half);
      let acc = 0;
      let norm = 0;
      for (let k = k0; k <= k1; k++) {
        const h = kernel[Math.round((t - k) * RES) + kn];
        acc += buf[k - this.bufStart] * h;
        norm += h;
      }
      this.emit(norm > 0 ? acc / norm : 0);
      this.produced++;
    }
    // Drop input no longer needed by any future output.
    const keepFrom = Math.floor(this.produced * step - half) - 1;
    const drop = keepFrom - this.bufStart;
    if (drop > 0) {
      this.buf.copyWithin(0, drop, this.bufLen);
      this.bufLen -= drop;
      this.bufStart += drop;
    }
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || input.length === 0) return true;
    let mono = input[0];
    if (input.length > 1) {
      mono = new Float32Array(input[0].length);
      for (const ch of input) for (let i = 0; i < ch.length; i++) mono[i] += ch[i] / input.length;
    }
    if (this.passthrough) {
      for (let i = 0; i < mono.length; i++) this.emit(mono[i]);
    } else {
      this.append(mono);
      this.resample();
    }
    return true;
  }
}

registerProcessor("capture-16k", Capture16k);
