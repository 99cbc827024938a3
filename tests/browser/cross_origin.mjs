// The JavaScript SDK in a page of another origin than the gateway (the web app on its own host, the gateway on
// another), in headless Chromium, forced onto each fallback transport: SSE (an EventSource plus op POSTs) and
// long-poll (POSTs with `Content-Type: application/json`, which the browser preflights with OPTIONS). The page
// subscribes, gets the backend's publications and sends an op, without auth and with a JWT (in the query on SSE, in
// `Authorization` on long-poll: preflighted as well). A gateway whose `server.allowed_origins` does not list the
// page's origin is not usable from it. Run by tests/js_sdk.rs.
import http from "node:http";
import { readFile } from "node:fs/promises";
import { run, waitFor, check } from "./harness.mjs";
import { Gateway, jwtArgs, sleep, token } from "./gateway.mjs";

const SDK = new URL("../../clients/js/src/wsgate.js", import.meta.url);

// The page's own site: it serves the page and the SDK, so the page's origin is this server's, not the gateway's.
const site = http.createServer(async (req, res) => {
  if (req.url === "/wsgate.js") {
    res.writeHead(200, { "Content-Type": "text/javascript" });
    res.end(await readFile(SDK));
    return;
  }
  res.writeHead(200, { "Content-Type": "text/html" });
  res.end(`<!doctype html><title>app</title>
<script type="module">import { Wsgate } from "/wsgate.js"; window.Wsgate = Wsgate;</script>`);
});
await new Promise(resolve => site.listen(0, "127.0.0.1", resolve));
const page_url = `http://localhost:${site.address().port}/`;

const gw = await Gateway.start();
const authed = await Gateway.start({ args: [...jwtArgs, "--set", 'auth.default_channels=["*"]'] });
const now = Math.floor(Date.now() / 1000);
const jwt = token({ sub: "u1", iat: now, exp: now + 600 });
const elsewhere = await Gateway.start({ args: ["--set", 'server.allowed_origins=["http://app.example"]'] });

/// Starts a client in the page on `transport` against the gateway at `ws` (host:port), with `jwt` if given.
function start(page, ws, transport, jwt = null) {
  return page.evaluate((url, transport, jwt) => {
    const c = new window.Wsgate(url, { transports: [transport], backoff: { base: 50, cap: 200 }, token: jwt });
    window.client = c;
    window.got = [];
    c.subscribe("news", { onMessage: d => window.got.push(d.n) });
  }, `ws://${ws}/ws`, transport, jwt);
}

const state = page => page.evaluate(() => ({
  state: window.client.state,
  transport: window.client.transport,
  subscribed: !!window.client._subs.get("news")?.subscribed,
  got: window.got,
}));

try {
  // The browser reports each refused cross-origin request on the console: expected in the refusal below.
  await run("cross-origin fallback", async (_page, _browser, newPage) => {
    for (const [auth, gateway, credential] of [["no auth", gw, null], ["a JWT", authed, jwt]]) {
      for (const transport of ["sse", "poll"]) {
        const what = `${transport} with ${auth}`;
        const page = await newPage();
        await page.goto(page_url);
        await page.waitForFunction(() => window.Wsgate);
        check(new URL(page.url()).host !== gateway.ws, "the page and the gateway are on different origins");
        await start(page, gateway.ws, transport, credential);
        await waitFor(async () => {
          const s = await state(page);
          return s.state === "connected" && s.subscribed;
        }, `subscribed over ${what} from another origin (${JSON.stringify(await state(page))})`);
        check((await state(page)).transport === transport, `the client uses ${transport}`);
        for (let n = 1; n <= 3; n++) await gateway.publish("news", { n });
        await waitFor(async () => (await state(page)).got.length === 3, `3 publications over ${what}`);
        check(JSON.stringify((await state(page)).got) === "[1,2,3]", "in order, once each");
        const ok = await page.evaluate(() => window.client.send({ hello: 1 }).then(r => r.ok));
        check(ok === true, `an op over ${what} from another origin`);
        await page.evaluate(() => window.client.close());
        await page.close();
      }
    }

    // Not listed in server.allowed_origins: the page's preflights and requests are refused (403).
    for (const transport of ["sse", "poll"]) {
      const page = await newPage();
      await page.goto(page_url);
      await page.waitForFunction(() => window.Wsgate);
      await start(page, elsewhere.ws, transport);
      await sleep(1500);
      const s = await state(page);
      check(s.state !== "connected" && s.got.length === 0, `refused over ${transport}: ${JSON.stringify(s)}`);
      await page.evaluate(() => window.client.close());
      await page.close();
    }
  }, { ignoreConsole: [/Access-Control|CORS|Failed to load resource|ERR_FAILED|EventSource/i] });
} finally {
  site.close();
  await gw.stop();
  await authed.stop();
  await elsewhere.stop();
}
