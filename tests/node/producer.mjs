// A foreign (Node) BullMQ producer enqueuing streamproxy jobs, following the documented schema
// (streamproxy/jobs/queue.py): queue "transcribe", job name "transcribe", data with audio_b64 or
// audio_key, params; then it waits for a streamproxy worker to complete them and prints the results.
//
// usage: node producer.mjs REDIS_URL PREFIX WAV_FILE
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Job, Queue } from 'bullmq';

const [redisUrl, prefix, wavPath] = process.argv.slice(2);
const u = new URL(redisUrl);
const connection = { host: u.hostname, port: Number(u.port || 6379) };
const queue = new Queue('transcribe', { connection, prefix });
const audio = readFileSync(wavPath);
const opts = (jobId) => ({
  jobId,
  attempts: 3,
  backoff: { type: 'exponential', delay: 1000 },
  removeOnComplete: { age: 3600 },
  removeOnFail: { age: 3600 },
});

// 1. audio inline, base64.
const inlineId = randomUUID();
await queue.add('transcribe', { audio_b64: audio.toString('base64'), params: { model: 'nova-3' } }, opts(inlineId));

// 2. audio stored in Redis first, referenced by key (how streamproxy's own gateway does it).
const keyedId = randomUUID();
const key = `${prefix}:sp:audio:${keyedId}`;
const client = await queue.client;
await client.set(key, audio, 'EX', 3600);
await queue.add('transcribe', { audio_key: key, params: { model: 'nova-3', punctuate: 'true' } }, opts(keyedId));

const out = {};
const deadline = Date.now() + 30000;
for (const id of [inlineId, keyedId]) {
  for (;;) {
    const job = await Job.fromId(queue, id);
    const state = await job.getState();
    if (state === 'completed' || state === 'failed') {
      out[id] = { state, result: job.returnvalue, error: job.failedReason, attemptsMade: job.attemptsMade };
      break;
    }
    if (Date.now() > deadline) {
      out[id] = { state, error: 'timeout' };
      break;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}
// The worker unlinks a finished job's audio with its next job's first round trip, or within
// 0.2 s when none follows: wait up to 5 s for that.
for (const until = Date.now() + 5000; (await client.exists(key)) && Date.now() < until; ) {
  await new Promise((r) => setTimeout(r, 50));
}
out.keyLeft = await client.exists(key);
console.log(JSON.stringify(out));
await queue.close();
