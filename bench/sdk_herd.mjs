// The thundering herd after a gateway restart, with the JavaScript SDK (clients/js/src/wsgate.js): N clients in
// this process are connected, the gateway is killed, restarted DOWN seconds later on the same port, and the times
// at which the clients' new sessions open are recorded. Run once with the SDK's full jitter and once with the
// jitter turned off (Math.random() = 1: every client waits exactly min(cap, base·2^n)), in one run:
//
//   cargo build && node bench/sdk_herd.mjs [N=1000] [DOWN_MS=2000]
//
// Prints, per mode: how long until every client was back, and the most new sessions within any 50 ms (the burst
// the gateway and its backend absorb). Needs tests/browser/node_modules (npm ci there) for `ws`.
import WebSocket from "../tests/browser/node_modules/ws/wrapper.mjs";
import { Wsgate } from "../clients/js/src/wsgate.js";
import { Gateway, sleep, until } from "../tests/browser/gateway.mjs";

const N = Number(process.argv[2] || 1000);
const DOWN_MS = Number(process.argv[3] || 2000);
const BACKOFF = { base: 500, cap: 30000 }; // the SDK's defaults
const WINDOW_MS = 50;

async function herd(jitter) {
  const gw = await Gateway.start({ args: ["--set", "limits.connect_rate=1000000", "--set", "server.max_connections=100000"] });
  const random = Math.random;
  if (!jitter) Math.random = () => 1;
  const clients = [];
  try {
    for (let i = 0; i < N; i++) clients.push(new Wsgate(gw.wsUrl(), { WebSocket, transports: ["websocket"], backoff: BACKOFF }));
    await until(() => clients.every(c => c.state === "connected"), `${N} clients connected`, 60000);
    const back = [];
    for (const c of clients) c.on("connected", () => back.push(Date.now()));
    await gw.kill();
    const killed = Date.now();
    await sleep(DOWN_MS);
    await gw.restart();
    const restarted = Date.now();
    await until(() => back.length === N, `${N} clients back`, 120000);
    back.sort((a, b) => a - b);
    let burst = 0;
    for (let i = 0, j = 0; i < back.length; i++) {
      while (back[i] - back[j] >= WINDOW_MS) j++;
      burst = Math.max(burst, i - j + 1);
    }
    return {
      mode: jitter ? "full jitter (SDK)" : "no jitter",
      allBackMs: back.at(-1) - restarted,
      downMs: restarted - killed,
      burst,
    };
  } finally {
    Math.random = random;
    for (const c of clients) c.close();
    await gw.stop();
  }
}

const rows = [await herd(true), await herd(false)];
console.log(`${N} SDK clients, gateway down ${DOWN_MS} ms, backoff base ${BACKOFF.base} ms cap ${BACKOFF.cap} ms`);
console.log("| mode | gateway down (ms) | all back after the restart (ms) | most new sessions in 50 ms |");
console.log("| --- | --- | --- | --- |");
for (const r of rows) console.log(`| ${r.mode} | ${r.downMs} | ${r.allBackMs} | ${r.burst} |`);
