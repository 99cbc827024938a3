// The demo page (clients/js/demo/index.html with the SDK) in headless Chromium against the real gateway with
// `debug.demo_relay` on. The page and the SDK come from a small static server here; the page reaches the gateway
// through its `?ws=` parameter. Checks: two pages see each other's items; a long item arrives intact while the
// gateway compresses (permessage-deflate, which Chromium always offers); both pages keep every item across a
// gateway restart, including those added while it was down. WSGATE_SCREENSHOT=path saves the page.
import http from "node:http";
import { readFileSync } from "node:fs";
import { run, waitFor, check } from "./harness.mjs";
import { DEMO_HISTORY, add, hasAll, info, items, recoveredFromHistory, stepper } from "./demo.mjs";
import { Gateway, Proxy, metric } from "./gateway.mjs";

const ROOT = new URL("../../clients/js/", import.meta.url);
const FILES = {
  "/": ["demo/index.html", "text/html; charset=utf-8"],
  "/wsgate.js": ["src/wsgate.js", "text/javascript; charset=utf-8"],
};

function staticServer() {
  const server = http.createServer((req, res) => {
    const file = FILES[new URL(req.url, "http://x").pathname];
    if (!file) return res.writeHead(404).end();
    res.writeHead(200, { "Content-Type": file[1] }).end(readFileSync(new URL(file[0], ROOT)));
  });
  return new Promise(resolve => server.listen(0, "127.0.0.1", () => resolve(server)));
}

const step = stepper("demo page");
const state = async page => (await info(page)).state;

const gw = await Gateway.start({ args: ["--set", "debug.demo_relay=true"], config: DEMO_HISTORY });
// Page B reaches the gateway through a proxy that can cut its connection.
const proxy = await Proxy.start(gw.ws);
const web = await staticServer();
const pageUrl = ws => `http://127.0.0.1:${web.address().port}/?ws=${encodeURIComponent(ws)}`;

await run("demo page", async (a, _browser, newPage) => {
  const b = await newPage();
  await a.goto(pageUrl(gw.wsUrl()));
  await b.goto(pageUrl(`ws://${proxy.addr}/ws`));
  for (const p of [a, b]) await waitFor(async () => (await state(p)) === "connected", "both pages connected");
  check((await a.$eval("#transport", e => e.textContent)) === "websocket", "the page shows its transport");

  step("both pages connected");
  // Two pages see each other's items.
  await add(a, "from A");
  await add(b, "from B");
  await hasAll(a, ["from A", "from B"], "page A has both items");
  await hasAll(b, ["from A", "from B"], "page B has both items");

  step("the pages see each other's items");
  // permessage-deflate in a real browser: a long item is published compressed and arrives intact.
  const deflatedBefore = metric(await gw.metrics(), "wsgate_deflate_bytes_out_total");
  const long = "a long line that compresses well, ".repeat(20) + "end";
  await add(a, long);
  await hasAll(b, [long], "page B has the long item, intact");
  const deflatedAfter = metric(await gw.metrics(), "wsgate_deflate_bytes_out_total");
  check(deflatedAfter > deflatedBefore, `no compressed frames (deflate bytes out ${deflatedBefore} → ${deflatedAfter})`);

  step("a compressed item arrived intact");

  // Page B's connection is cut while page A adds items: B recovers them from the channel's history.
  proxy.refuse(true);
  proxy.cut();
  await waitFor(async () => (await state(b)) !== "connected", "page B notices the cut");
  for (const n of [1, 2, 3]) await add(a, `while B was away ${n}`);
  await hasAll(a, ["while B was away 3"], "page A has its items");
  proxy.refuse(false);
  await hasAll(b, [1, 2, 3].map(n => `while B was away ${n}`), "page B recovered the items it missed");
  check(await recoveredFromHistory(b), "page B recovered from history, not from its peers");
  step("page B recovered what it missed while cut off");
  // A gateway restart: items added while it is down are kept and reach the other page after the reconnect.
  await gw.kill();
  for (const p of [a, b]) await waitFor(async () => (await state(p)) !== "connected", "the pages notice");
  await add(a, "offline A");
  await add(b, "offline B");
  step("items added while the gateway is down");
  await gw.restart();
  step("the gateway is back");
  const all = ["from A", "from B", long, ...[1, 2, 3].map(n => `while B was away ${n}`), "offline A", "offline B"];
  await hasAll(a, all, "page A has every item after the restart");
  await hasAll(b, all, "page B has every item after the restart");
  for (const p of [a, b]) {
    check((await items(p)).length === all.length, `no duplicates: ${JSON.stringify(await items(p))}`);
  }
  if (process.env.WSGATE_SCREENSHOT) {
    await a.bringToFront(); // a background tab renders no frames to capture
    await a.setViewport({ width: 760, height: 560 });
    await a.screenshot({ path: process.env.WSGATE_SCREENSHOT, fullPage: true });
  }
}, { timeoutMs: 90000, ignoreConsole: [/WebSocket connection to .* failed/] });

proxy.close();
await gw.stop();
web.close();
