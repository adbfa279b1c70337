// Microphone -> 16 kHz mono PCM16 frames of 20 ms, posted to the page (which sends them on /v1/voice).
// Runs in the AudioWorkletGlobalScope: `sampleRate` is the context's rate (often 48000 or 44100).
// Downsampling averages the input samples that fall into each output sample (a box low-pass, enough
// for speech recognition), keeping the fractional position across blocks so no sample is lost.
class PcmCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = (options && options.processorOptions) || {};
    this.outRate = o.outRate || 16000;
    this.frame = Math.round(this.outRate * (o.frameMs || 20) / 1000);
    this.step = sampleRate / this.outRate;     // input samples per output sample
    this.pos = 0;                              // fractional input position of the next output sample
    this.acc = 0; this.accN = 0;               // running average of the current output sample
    this.out = new Int16Array(this.frame);
    this.n = 0;
    this.active = true;
    this.port.onmessage = (e) => { if (e.data && e.data.type === "stop") this.active = false; };
  }

  push(v) {
    const s = Math.max(-1, Math.min(1, v));
    this.out[this.n++] = s < 0 ? s * 0x8000 : s * 0x7fff;
    if (this.n === this.frame) {
      this.port.postMessage(this.out.buffer, [this.out.buffer]);
      this.out = new Int16Array(this.frame);
      this.n = 0;
    }
  }

  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    if (!ch) return this.active;
    for (let i = 0; i < ch.length; i++) {
      this.acc += ch[i]; this.accN++;
      this.pos += 1;
      if (this.pos >= this.step) {
        this.pos -= this.step;
        this.push(this.acc / this.accN);
        this.acc = 0; this.accN = 0;
      }
    }
    return this.active;
  }
}

registerProcessor("pcm-capture", PcmCapture);
