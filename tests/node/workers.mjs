// What Node BullMQ (and so Bull Board, which calls Queue.getWorkers()) sees of the workers of
// streamproxy's queues.
//
// usage: node workers.mjs REDIS_URL PREFIX   -> {"transcribe": [rawname, ...], "webhooks": [...]}
import { Queue } from 'bullmq';

const [redisUrl, prefix] = process.argv.slice(2);
const u = new URL(redisUrl);
const connection = { host: u.hostname, port: Number(u.port || 6379) };
const out = {};
for (const name of ['transcribe', 'webhooks']) {
  const queue = new Queue(name, { connection, prefix });
  out[name] = (await queue.getWorkers()).map((w) => w.rawname);
  await queue.close();
}
console.log(JSON.stringify(out));
