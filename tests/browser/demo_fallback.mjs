// The demo page served by the gateway itself (`debug.demo_path`) in headless Chromium, over each transport: a page
// with WebSocket, one without `window.WebSocket` (the SDK falls back to SSE) and one without EventSource either
// (long-poll) edit the same list and see each other's items; then the SSE and long-poll pages keep every item
// across a gateway restart, like the WebSocket page does (tests/browser/demo_page.mjs).
import { run, waitFor, check } from "./harness.mjs";
import { add, hasAll, info, items, stepper } from "./demo.mjs";
import { Gateway } from "./gateway.mjs";

const step = stepper("demo fallback");

const gw = await Gateway.start({ args: ["--set", "debug.demo_relay=true", "--set", "debug.demo_path=/demo"] });
const url = `http://${gw.ws}/demo/`;

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

  await gw.kill();
  for (const [name, page] of Object.entries(pages)) {
    await waitFor(async () => (await info(page)).state !== "connected", `the ${name} page notices the restart`);
  }
  await add(sse, "offline sse");
  await add(poll, "offline poll");
  await gw.restart();
  const all = [...first, "offline sse", "offline poll"];
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

await gw.stop();
