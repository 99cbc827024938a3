// The JavaScript SDK (clients/js/src/wsgate.js) against the real gateway, with Node's test runner:
// `node --test sdk.test.mjs` (tests/js_sdk.rs runs it under `cargo test`). Node has no WebSocket before v22, so
// the SDK gets the `ws` package's (its `WebSocket` option).
import { test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { Wsgate, LOCAL, compareIds } from "../../clients/js/src/wsgate.js";
import { Gateway, NodeEventSource, Proxy, jwtArgs, metric, token, until, sleep } from "./gateway.mjs";

const HISTORY = `
[[channels.namespace]]
prefix = "rec:"
history_size = 1000
recover = true
`;

function client(url, options = {}) {
  const c = new Wsgate(url, { WebSocket, transports: ["websocket"], ...options });
  c.errors = [];
  c.on("error", e => c.errors.push(e));
  return c;
}

const connected = c => until(() => c.state === "connected", `state connected (now ${c.state})`);

test("reconnects with full-jitter exponential backoff while the gateway is down, then resubscribes", async () => {
  const gw = await Gateway.start();
  const base = 40, cap = 320;
  const c = client(gw.wsUrl(), { backoff: { base, cap } });
  try {
    const got = [];
    c.subscribe("news", { onMessage: d => got.push(d) });
    await connected(c);
    const firstSid = c.sid;
    const retries = [];
    c.on("reconnecting", r => retries.push({ ...r, at: Date.now() }));
    await gw.kill();
    await until(() => retries.length >= 8, "8 reconnect attempts");
    for (const [i, r] of retries.slice(0, 8).entries()) {
      assert.equal(r.attempt, i + 1);
      const ceiling = Math.min(cap, base * 2 ** i);
      assert.ok(r.delay >= 0 && r.delay <= ceiling, `attempt ${r.attempt}: delay ${r.delay} outside [0, ${ceiling}]`);
      if (i > 0) {
        // The next attempt waits at least the delay drawn for this one.
        assert.ok(r.at - retries[i - 1].at >= retries[i - 1].delay - 5, `attempt ${r.attempt} came too early`);
      }
    }
    // Full jitter: the delays are drawn, not a fixed ladder (8 equal fractions of the ceiling would be a bug).
    const fractions = retries.slice(3, 8).map((r, i) => r.delay / Math.min(cap, base * 2 ** (i + 3)));
    assert.ok(new Set(fractions.map(f => f.toFixed(3))).size >= 4, `delays not jittered: ${fractions}`);
    await gw.restart();
    await connected(c);
    assert.notEqual(c.sid, firstSid, "a new session after the restart");
    await until(() => retries.length && (c._attempt === 0), "the backoff reset after the welcome");
    // The subscription came back with the reconnect.
    await until(async () => {
      await gw.publish("news", { n: 1 });
      return got.length > 0;
    }, "a publication after the restart");
  } finally {
    c.close();
    await gw.stop();
  }
});

test("resubscribes with recovery: no gap and no duplicate across cut connections; recovered:false surfaced", async () => {
  const gw = await Gateway.start({ config: HISTORY });
  const proxy = await Proxy.start(gw.ws);
  const c = client(`ws://${proxy.addr}/ws`, { backoff: { base: 20, cap: 100 } });
  try {
    const got = [], recoveries = [], plainRecoveries = [];
    c.subscribe("rec:a", { onMessage: d => got.push(d.n), onRecovered: r => recoveries.push(r) });
    c.subscribe("plain", { onRecovered: r => plainRecoveries.push(r) });
    await connected(c);
    await until(() => c._subs.get("rec:a").subscribed, "subscribed");
    const N = 300;
    for (let n = 1; n <= N; n++) {
      await gw.publish("rec:a", { n });
      if (n % 75 === 0) {
        // Three network failures while publications keep coming, each on a connection that is up.
        await until(() => c.state === "connected" && c._subs.get("rec:a").subscribed, "subscribed again");
        proxy.cut();
      }
    }
    await until(() => got.length >= N && recoveries.length >= 3, `${N} messages (have ${got.length})`);
    await sleep(100);
    assert.deepEqual(got, Array.from({ length: N }, (_, i) => i + 1), "every publication once, in order");
    assert.ok(recoveries.length >= 3 && recoveries.every(r => r.recovered === true), JSON.stringify(recoveries));
    assert.ok(proxy.accepted >= 4, `reconnected through the proxy (${proxy.accepted} connections)`);
    // A channel without history cannot recover: the app is told after every resubscribe.
    assert.ok(plainRecoveries.length >= 3 && plainRecoveries.every(r => r.recovered === false));

    // A restarted standalone gateway lost the history (new epoch): recovered:false, and live messages go on.
    const before = recoveries.length;
    await gw.kill();
    await gw.restart();
    await until(() => recoveries.length > before, "the resubscribe after the restart");
    assert.equal(recoveries.at(-1).recovered, false);
    await gw.publish("rec:a", { n: N + 1 });
    await until(() => got.at(-1) === N + 1, "a live message after recovered:false");
  } finally {
    c.close();
    proxy.close();
    await gw.stop();
  }
});

test("refreshes the token before it expires, and gets a new one after a 4001 close", async () => {
  const gw = await Gateway.start({ args: [...jwtArgs, "--set", "auth.leeway=0", "--set", 'auth.default_channels=["*"]'] });
  let issued = 0;
  const getToken = async () => {
    issued++;
    const now = Math.floor(Date.now() / 1000);
    return token({ sub: "u1", iat: now, exp: now + 3 });
  };
  const c = client(gw.wsUrl(), { getToken, refreshAhead: 0.5, backoff: { base: 20, cap: 100 } });
  try {
    const refreshed = [], drops = [];
    c.on("token", t => refreshed.push(t));
    c.on("disconnected", d => drops.push(d));
    await connected(c);
    const sid = c.sid;
    // 6 s with 3 s tokens: the session would end twice without refreshes.
    await sleep(6000);
    assert.deepEqual(drops, [], "no disconnect while refreshing");
    assert.equal(c.sid, sid);
    assert.ok(refreshed.length >= 2, `refreshed ${refreshed.length} times`);
    assert.ok(issued >= 3);

    // The server ends the session with 4001: the client fetches a token and comes back.
    const before = issued;
    await gw.request("POST", "/api/disconnect", { sid, code: 4001, reason: "token expired" });
    await until(() => c.state === "connected" && c.sid !== sid, "a new session after 4001");
    assert.equal(drops[0].code, 4001);
    assert.ok(issued > before, "a fresh token for the reconnect");
  } finally {
    c.close();
  }
  // Without getToken there is nothing to renew: 4001 ends the client.
  const now = Math.floor(Date.now() / 1000);
  const fixed = client(gw.wsUrl(), { token: token({ sub: "u2", exp: now + 60 }) });
  try {
    await connected(fixed);
    await gw.request("POST", "/api/disconnect", { sid: fixed.sid, code: 4001, reason: "token expired" });
    await until(() => fixed.state === "closed", "closed after 4001");
    assert.ok(fixed.errors.some(e => e.code === 4001));
  } finally {
    fixed.close();
    await gw.stop();
  }
});

test("a dead connection is found by the heartbeat and replaced", async () => {
  const gw = await Gateway.start({ args: ["--set", "ws.ping_interval=1", "--set", "ws.idle_timeout=10"] });
  const proxy = await Proxy.start(gw.ws);
  const c = client(`ws://${proxy.addr}/ws`, { pongTimeout: 400, backoff: { base: 20, cap: 100 } });
  try {
    const drops = [];
    c.on("disconnected", d => drops.push(d));
    await connected(c);
    assert.equal(c._heartbeat.interval, 1);
    const sid = c.sid;
    await sleep(2500); // two beats answered: no false alarm
    assert.deepEqual(drops, []);
    const cutAt = Date.now();
    proxy.blackhole(); // the TCP connection stays open; nothing gets through any more
    await until(() => drops.length === 1, "the heartbeat timeout", 5000);
    assert.equal(drops[0].code, LOCAL.HEARTBEAT_TIMEOUT);
    assert.ok(Date.now() - cutAt < 2500, `found after ${Date.now() - cutAt} ms (interval 1 s + 400 ms)`);
    await until(() => c.state === "connected" && c.sid !== sid, "a new connection");
  } finally {
    c.close();
    proxy.close();
    await gw.stop();
  }
});

test("user messages: acked, retransmits deduplicated by id, missed ones replayed once after a reconnect", async () => {
  const gw = await Gateway.start({ args: [...jwtArgs, "--set", "delivery.ack_timeout=20"] });
  const proxy = await Proxy.start(gw.ws);
  const now = Math.floor(Date.now() / 1000);
  const c = client(`ws://${proxy.addr}/ws`, {
    token: token({ sub: "u1", device: "d1", exp: now + 600 }),
    backoff: { base: 20, cap: 100 },
  });
  try {
    const got = [];
    let stall = true;
    c.on("message", m => {
      got.push(m);
      if (stall) {
        // Busy for 200 ms: the gateway resends what is not acked yet (every 20, 40, 80 ms ...).
        stall = false;
        const until = Date.now() + 200;
        while (Date.now() < until);
      }
    });
    let drops = 0;
    c.on("disconnected", () => drops++);
    await connected(c);
    for (let n = 1; n <= 5; n++) await gw.request("POST", "/api/publish", { user: "u1", data: { n }, ack: true });
    await until(() => got.length >= 5, "5 user messages");
    proxy.refuse(true);
    proxy.cut();
    await until(() => drops >= 1, "the cut");
    // While the client is away the gateway keeps these for it.
    for (let n = 6; n <= 10; n++) await gw.request("POST", "/api/publish", { user: "u1", data: { n }, ack: true });
    proxy.refuse(false);
    await until(() => got.length >= 10, `10 user messages (have ${got.length})`);
    await sleep(300); // late retransmits would show up now
    assert.deepEqual(got.map(m => m.data.n), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], "each message once");
    const ids = got.map(m => m.id);
    assert.ok(ids.every((id, i) => i === 0 || compareIds(ids[i - 1], id) < 0), "ids in order");
    assert.ok(got.slice(5).every(m => m.replay), "6..10 came as the replay");
    const retransmits = metric(await gw.metrics(), "wsgate_ack_retransmits_total");
    assert.ok(retransmits > 0, "the stall made the gateway resend (else dedup was not exercised)");
  } finally {
    c.close();
    proxy.close();
    await gw.stop();
  }
});

/// A WebSocket for a network that kills every upgrade (a corporate proxy): each attempt fails at once.
function refusedWebSocket() {
  const counter = { attempts: 0 };
  counter.WebSocket = class {
    constructor() {
      counter.attempts++;
      setTimeout(() => this.onclose?.({ code: 1006, reason: "" }), 5);
    }
    send() {}
    close() {}
  };
  return counter;
}

for (const [transport, extra] of [["sse", { EventSource: NodeEventSource }], ["poll", {}]]) {
  test(`falls back to ${transport} when WebSocket is refused, and recovers across a cut connection`, async () => {
    const gw = await Gateway.start({ config: HISTORY });
    const proxy = await Proxy.start(gw.ws);
    const refused = refusedWebSocket();
    // Without an EventSource (Node has none) sse is skipped.
    const c = new Wsgate(`ws://${proxy.addr}/ws`, {
      WebSocket: refused.WebSocket,
      backoff: { base: 20, cap: 100 },
      ...extra,
    });
    try {
      await fallbackAndRecover(c, transport, gw, proxy, refused);
    } finally {
      c.close();
      proxy.close();
      await gw.stop();
    }
  });
}

/// Over `transport`: subscribes, sends, gets 100 publications with no gap although its connection is cut, and is
/// told the close code when the backend ends the session.
async function fallbackAndRecover(c, transport, gw, proxy, refused) {
  const got = [], recoveries = [];
  c.subscribe("rec:p", { onMessage: d => got.push(d.n), onRecovered: r => recoveries.push(r) });
  await connected(c);
  assert.equal(c.transport, transport);
  assert.equal(refused.attempts, 2, `fallbackAfter (2) failed WebSocket attempts, then ${transport}`);
  await until(() => c._subs.get("rec:p").subscribed, `subscribed over ${transport}`);
  assert.ok((await c.send({ hello: 1 })).ok, `op msg over ${transport}`);
  const N = 100;
  for (let n = 1; n <= N; n++) {
    await gw.publish("rec:p", { n });
    if (n === 50) {
      // Once 50 arrived, the event stream (or the next poll, held by the server) is the one open connection: it
      // dies with its TCP connection.
      await until(() => got.length === 50 && proxy.pairs.size === 1, "one open connection");
      await sleep(50);
      proxy.cut();
    }
  }
  await until(() => got.length >= N, `${N} messages over ${transport} (have ${got.length})`);
  await sleep(100);
  assert.deepEqual(got, Array.from({ length: N }, (_, i) => i + 1), "every publication once, in order");
  assert.ok(recoveries.length >= 1 && recoveries.every(r => r.recovered), JSON.stringify(recoveries));
  assert.equal(c.transport, transport, `it stays on ${transport}`);
  // The session's end reaches the client with its close code (SSE `event: close`, long-poll `type: close`).
  const drops = [];
  c.on("disconnected", d => drops.push(d));
  await gw.request("POST", "/api/disconnect", { sid: c.sid, code: 4000, reason: "kicked" });
  await until(() => c.state === "closed", `closed after the backend's disconnect over ${transport}`);
  assert.deepEqual(drops.map(d => [d.code, d.reason, d.reconnect]), [[4000, "kicked", false]]);
}

test("close codes: the backend's 4000 ends the client, 4008 comes back no sooner than backoff.later", async () => {
  const gw = await Gateway.start();
  const later = 400;
  const c = client(gw.wsUrl(), { backoff: { base: 20, cap: 100, later } });
  const kicked = client(gw.wsUrl(), { backoff: { base: 20, cap: 100, later } });
  try {
    await connected(c);
    await connected(kicked);
    const retries = [];
    kicked.on("reconnecting", r => retries.push(r));
    await gw.request("POST", "/api/disconnect", { sid: kicked.sid, code: 4000, reason: "kicked" });
    await until(() => kicked.state === "closed", "closed after 4000");
    await sleep(200);
    assert.deepEqual(retries, [], "no reconnect after the backend's disconnect");

    const sid = c.sid;
    const dropped = Date.now();
    let delay = null;
    c.on("reconnecting", r => { delay = r.delay; });
    await gw.request("POST", "/api/disconnect", { sid, code: 4008, reason: "rate limit exceeded" });
    await until(() => c.state === "connected" && c.sid !== sid, "back after 4008");
    assert.ok(delay >= later, `delay ${delay} below backoff.later`);
    assert.ok(Date.now() - dropped >= later, "did not come back before backoff.later");
  } finally {
    c.close();
    kicked.close();
    await gw.stop();
  }
});
