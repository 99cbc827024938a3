// The demo page served by the gateway itself (`debug.demo_path`) in headless Chromium, over each transport: a page
// with WebSocket, one without `window.WebSocket` (the SDK falls back to SSE) and one without EventSource either
// (long-poll) edit the same list and see each other's items; cut off, each recovers from the channel's history
// what the backend added meanwhile; and they keep every item across a gateway restart.
import { run, waitFor, check } from "./harness.mjs";
import { DEMO_HISTORY, add, hasAll, info, items, publishItem, recoveredFromHistory, stepper } from "./demo.mjs";
import { Gateway, Proxy } from "./gateway.mjs";

const step = stepper("demo fallback");

const gw = await Gateway.start({
  args: ["--set", "debug.demo_relay=true", "--set", "debug.demo_path=/demo"],
  config: DEMO_HISTORY,
});
// The pages load from and talk to the gateway through a proxy that can cut them off.
const proxy = await Proxy.start(gw.ws);
const url = `http://${proxy.addr}/demo/`;

await run("demo fallback", async (ws, _browser, newPage) => {
  const sse = await newPage();
  await sse.evaluateOnNewDocument(() => { delete window.WebSocket; });
  const poll = await newPage();
  await poll.evaluateOnNewDocument(() => { delete window.WebSocket; delete window.EventSource; });
  const pages = { websocket: ws, sse, poll };
  for (const [name, page] of Object.entries(pages)) {
    await page.goto(url);
    await waitFor(async () => (await info(page)).state === "connected", `the ${name} page connected`);
    const shown = await page.$eval("#transport", e => e.textContent);
    check((await info(page)).transport === name && shown === name, `the ${name} page uses and shows ${name} (${shown})`);
  }
  step("connected over websocket, sse and poll");

  for (const [name, page] of Object.entries(pages)) await add(page, `from ${name}`);
  const first = Object.keys(pages).map(n => `from ${n}`);
  for (const [name, page] of Object.entries(pages)) await hasAll(page, first, `the ${name} page has every item`);
  step("every page sees the others' items");

  // Every page is cut off while the backend adds items: each recovers them from the channel's history over its
  // own transport.
  proxy.refuse(true);
  proxy.cut();
  for (const [name, page] of Object.entries(pages)) {
    await waitFor(async () => (await info(page)).state !== "connected", `the ${name} page notices the cut`);
  }
  const missed = ["missed 1", "missed 2", "missed 3"];
  for (const text of missed) await publishItem(gw, text);
  proxy.refuse(false);
  for (const [name, page] of Object.entries(pages)) {
    await hasAll(page, missed, `the ${name} page recovered what it missed`);
    check(await recoveredFromHistory(page), `the ${name} page recovered from history, not from its peers`);
  }
  step("every page recovered what it missed while cut off");

  await gw.kill();
  for (const [name, page] of Object.entries(pages)) {
    await waitFor(async () => (await info(page)).state !== "connected", `the ${name} page notices the restart`);
  }
  await add(sse, "offline sse");
  await add(poll, "offline poll");
  await gw.restart();
  const all = [...first, ...missed, "offline sse", "offline poll"];
  for (const [name, page] of Object.entries(pages)) {
    await hasAll(page, all, `the ${name} page has every item after the restart`);
    check((await items(page)).length === all.length, `no duplicates on the ${name} page`);
    check((await info(page)).transport === name, `the ${name} page stayed on ${name}`);
  }
  step("every item kept across the restart");
}, {
  timeoutMs: 60000,
  // While the gateway is down the browser reports the failed connections and requests itself.
  ignoreConsole: [/WebSocket connection to .* failed/, /Failed to load resource: net::ERR_/],
});

proxy.close();
await gw.stop();
