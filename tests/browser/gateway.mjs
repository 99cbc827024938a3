// The real wsgate binary for the JavaScript tests (sdk.test.mjs, demo_page.mjs): started on port 0, its ports read
// from the `wsgate ready ws=.. api=..` line (as tests/common/mod.rs does), stopped and restarted on the same ports,
// plus what the tests need around it: a TCP proxy that can cut or black-hole connections, the HTTP API, HS256 tokens.
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const API_KEY = "js-test-key";
export const SECRET = "js-test-secret-0123456789";
/// The binary: $WSGATE_BIN (tests/js_sdk.rs passes Cargo's), else the debug build under $CARGO_TARGET_DIR.
export const BIN = process.env.WSGATE_BIN || `${process.env.CARGO_TARGET_DIR || "target"}/debug/wsgate`;

// A test that exits early (a timeout calls process.exit) must not leave its gateways running.
const running = new Set();
process.on("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

/// A running gateway. `args` are extra flags; `config` is TOML written to a file passed with --config.
export class Gateway {
  static async start({ args = [], config = null } = {}) {
    const g = new Gateway(args, config);
    await g._spawn("127.0.0.1:0", "127.0.0.1:0");
    return g;
  }

  constructor(args, config) {
    this.args = ["--set", `api.api_key=${API_KEY}`, "--threads", "2", ...args];
    if (process.env.WSGATE_TEST_IO_BACKEND) this.args.push("--io-backend", process.env.WSGATE_TEST_IO_BACKEND);
    if (config) {
      const file = join(mkdtempSync(join(tmpdir(), "wsgate-js-")), "wsgate.toml");
      writeFileSync(file, config);
      this.args.push("--config", file);
    }
    this.log = [];
  }

  async _spawn(listen, apiListen) {
    // The gateway reads WSGATE_* variables as config keys: none of the test's reach it.
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("WSGATE_")));
    const child = spawn(BIN, ["--listen", listen, "--api-listen", apiListen, ...this.args], {
      env,
      stdio: ["ignore", "ignore", "pipe"],
    });
    this.child = child;
    running.add(child);
    child.once("exit", () => running.delete(child));
    const exited = new Promise(resolve => {
      child.once("exit", resolve);
      child.once("error", e => resolve(`cannot start ${BIN}: ${e.message}`));
    });
    this.exited = exited;
    let buffered = "";
    const ready = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("no ready line within 10 s:\n" + this.log.join("\n"))), 10000);
      child.stderr.setEncoding("utf8");
      child.stderr.on("data", chunk => {
        buffered += chunk;
        let nl;
        while ((nl = buffered.indexOf("\n")) >= 0) {
          const line = buffered.slice(0, nl);
          buffered = buffered.slice(nl + 1);
          this.log.push(line);
          if (this.log.length > 400) this.log.splice(0, 100);
          const m = /^wsgate ready ws=(\S+) api=(\S+)/.exec(line);
          if (m) {
            clearTimeout(timer);
            resolve(m);
          }
        }
      });
      exited.then(code => {
        clearTimeout(timer);
        reject(new Error(`wsgate exited (${code}) before ready:\n` + this.log.join("\n")));
      });
    });
    const m = await ready;
    this.ws = m[1];
    this.api = m[2];
  }

  wsUrl(path = "/ws") {
    return `ws://${this.ws}${path}`;
  }

  /// Kills the process (SIGKILL: like a crash, nothing is closed cleanly) and waits for it to end.
  async kill() {
    this.child.kill("SIGKILL");
    await this.exited;
  }

  /// Starts it again on the same ports (the clients' URLs stay valid).
  async restart() {
    await this._spawn(this.ws, this.api);
  }

  async stop() {
    if (this.child.exitCode === null && this.child.signalCode === null) await this.kill();
  }

  async request(method, path, body) {
    const r = await fetch(`http://${this.api}${path}`, {
      method,
      headers: { Authorization: `apikey ${API_KEY}`, "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await r.text();
    if (r.status !== 200) throw new Error(`${method} ${path}: ${r.status} ${text}`);
    return JSON.parse(text);
  }

  publish(channel, data) {
    return this.request("POST", "/api/publish", { channel, data });
  }

  async metrics() {
    const r = await fetch(`http://${this.api}/metrics`, { headers: { Authorization: `apikey ${API_KEY}` } });
    const text = await r.text();
    if (r.status !== 200) throw new Error(`/metrics: ${r.status} ${text}`);
    return text;
  }
}

/// The sum of metric `name` over its label sets (e.g. per reactor) in Prometheus text; NaN when absent.
export function metric(text, name) {
  const lines = text.split("\n").filter(l => l.startsWith(name + " ") || l.startsWith(name + "{"));
  return lines.length ? lines.reduce((sum, l) => sum + Number(l.slice(l.lastIndexOf(" ") + 1)), 0) : NaN;
}

/// An HS256 JWT signed with SECRET (the gateway gets it from `jwtArgs`).
export function token(claims) {
  const b64 = obj => Buffer.from(JSON.stringify(obj)).toString("base64url");
  const head = b64({ alg: "HS256", typ: "JWT" }) + "." + b64(claims);
  return head + "." + createHmac("sha256", SECRET).update(head).digest("base64url");
}

export const jwtArgs = ["--set", "auth.mode=jwt", "--set", `auth.hs256_secret=${SECRET}`];

/// A TCP proxy in front of the gateway, to break connections the way networks do: `cut()` resets every
/// connection; `refuse(true)` resets new ones; `blackhole()` keeps the open ones open but forwards nothing more (a dead peer).
export class Proxy {
  static async start(target) {
    const p = new Proxy(target);
    await new Promise(resolve => p.server.listen(0, "127.0.0.1", resolve));
    p.addr = `127.0.0.1:${p.server.address().port}`;
    return p;
  }

  constructor(target) {
    const [host, port] = [target.slice(0, target.lastIndexOf(":")), Number(target.slice(target.lastIndexOf(":") + 1))];
    this.pairs = new Set();
    this.accepted = 0;
    this.refusing = false;
    this.server = net.createServer(client => {
      if (this.refusing) return client.resetAndDestroy();
      this.accepted++;
      const upstream = net.connect(port, host);
      const pair = { client, upstream, dead: false };
      this.pairs.add(pair);
      const forward = (from, to) => from.on("data", d => { if (!pair.dead) to.write(d); });
      forward(client, upstream);
      forward(upstream, client);
      const end = () => {
        this.pairs.delete(pair);
        client.destroy();
        upstream.destroy();
      };
      client.on("error", end).on("close", end);
      upstream.on("error", end).on("close", end);
    });
  }

  cut() {
    for (const { client, upstream } of this.pairs) {
      client.resetAndDestroy();
      upstream.destroy();
    }
    this.pairs.clear();
  }

  /// While refusing, new connections are reset at once (the gateway looks unreachable).
  refuse(on) {
    this.refusing = on;
  }

  /// The connections open now stop forwarding (new ones work).
  blackhole() {
    for (const pair of this.pairs) pair.dead = true;
  }

  close() {
    this.cut();
    this.server.close();
  }
}

/// Enough of the browser's EventSource for the SDK's SSE transport in Node (which has none): GET with
/// `Accept: text/event-stream`, `data:` lines joined into `message` events, named events (`event: close`), `onerror`
/// when the stream fails or ends, `close()`. No automatic reconnect (the SDK does its own).
export class NodeEventSource {
  constructor(url) {
    this.listeners = new Map();
    this.onmessage = null;
    this.onerror = null;
    this.controller = new AbortController();
    this.closed = false;
    this.read(url).catch(() => this.fail());
  }

  async read(url) {
    const r = await fetch(url, { headers: { Accept: "text/event-stream" }, signal: this.controller.signal });
    if (r.status !== 200 || !r.body) return this.fail();
    const decoder = new TextDecoder();
    let buffered = "";
    let event = { type: "message", data: [] };
    for await (const chunk of r.body) {
      buffered += decoder.decode(chunk, { stream: true });
      let nl;
      while ((nl = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, nl).replace(/\r$/, "");
        buffered = buffered.slice(nl + 1);
        if (line === "") {
          if (event.data.length) this.dispatch(event.type, event.data.join("\n"));
          event = { type: "message", data: [] };
        } else if (line.startsWith("data:")) {
          event.data.push(line.slice(5).replace(/^ /, ""));
        } else if (line.startsWith("event:")) {
          event.type = line.slice(6).trim();
        }
      }
    }
    this.fail();
  }

  dispatch(type, data) {
    if (this.closed) return;
    const e = { type, data };
    if (type === "message") this.onmessage?.(e);
    for (const fn of this.listeners.get(type) || []) fn(e);
  }

  fail() {
    if (!this.closed) this.onerror?.({ type: "error" });
  }

  addEventListener(type, fn) {
    if (!this.listeners.has(type)) this.listeners.set(type, []);
    this.listeners.get(type).push(fn);
  }

  close() {
    this.closed = true;
    this.controller.abort();
  }
}

export const sleep = ms => new Promise(r => setTimeout(r, ms));

/// Polls `probe` until it returns a truthy value; throws naming `what` after `timeoutMs`.
export async function until(probe, what, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}
