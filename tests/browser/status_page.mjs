// The live status page under load (started by tests/status_page.rs, which runs a bounded load meanwhile):
// the page loads behind the API key, its charts move while messages flow, its numbers match /api/stats once the
// load is over, it has no horizontal scrolling on a phone, and (WSGATE_SCREENSHOT) it is photographed for docs/.
import { run, waitFor, check, env } from "./harness.mjs";

const api = env("WSGATE_API");
const key = env("WSGATE_API_KEY");
const hostileChannel = env("WSGATE_HOSTILE_CHANNEL");

async function stats() {
  const r = await fetch(api + "/api/stats", { headers: { Authorization: "apikey " + key } });
  check(r.ok, "/api/stats: HTTP " + r.status);
  return r.json();
}

const tile = (page, id) =>
  page.$eval("#tile-" + id, t => (t.dataset.value === undefined ? null : Number(t.dataset.value)));
const chart = (page, id) =>
  page.$eval("#chart-" + id, c => ({ points: Number(c.dataset.points), image: c.toDataURL() }));

await run("status page", async page => {
  await page.setViewport({ width: 1280, height: 1000 });
  await page.authenticate({ username: "ops", password: key });
  const response = await page.goto(api + "/status", { waitUntil: "load" });
  check(response.status() === 200, "GET /status: HTTP " + response.status());

  // The load shows up: deliveries per second and a delivery latency above zero.
  await waitFor(async () => (await tile(page, "deliveries_per_s")) > 0, "deliveries/s > 0 on the page", 15000);
  await waitFor(async () => (await tile(page, "delivery_p99_us")) > 0, "delivery p99 > 0 on the page", 5000);

  // The charts move: more points, a different picture.
  const before = await chart(page, "deliveries");
  const latencyBefore = await chart(page, "delivery");
  await waitFor(async () => (await chart(page, "deliveries")).points >= before.points + 2, "two more chart points", 5000);
  const after = await chart(page, "deliveries");
  check(after.image !== before.image, "the deliveries chart was redrawn with the same picture");
  check((await chart(page, "delivery")).image !== latencyBefore.image, "the latency chart did not change");

  // While the load runs, the busiest channel is the loaded one, with every subscriber.
  await waitFor(async () => {
    const first = await page.$$eval("#channels tr", rows => rows.length > 1 ? [...rows[1].cells].map(c => c.textContent) : []);
    return first[0] === "load" && first[1] === "40";
  }, "channel \"load\" with 40 subscribers at the top of the busiest channels", 5000);
  // A client's channel name is shown as text, not run as markup.
  const cells = await page.$$eval("#channels td", tds => tds.map(td => td.textContent));
  check(cells.includes(hostileChannel), "the hostile channel name is not listed as text: " + JSON.stringify(cells));
  check((await page.$$("#channels img")).length === 0, "a channel name became markup");
  const shot = process.env.WSGATE_SCREENSHOT;
  if (shot) await page.screenshot({ path: shot, fullPage: true });

  // Once the load is over (the totals stop moving), the page shows what /api/stats says.
  let steady = await waitFor(async () => {
    const a = await stats();
    await new Promise(r => setTimeout(r, 1500));
    const b = await stats();
    return a.totals.messages_out_total === b.totals.messages_out_total ? b : null;
  }, "the load to end", 20000, 0);
  await waitFor(async () => {
    const shown = await page.$eval("body", b => ({ out: Number(b.dataset.messagesOut), conns: Number(b.dataset.connections) }));
    const conns = await tile(page, "connections");
    return shown.out === steady.totals.messages_out_total && shown.conns === steady.totals.connections &&
      conns === steady.totals.connections;
  }, "the page's totals to match /api/stats " + JSON.stringify({
    messages_out_total: steady.totals.messages_out_total, connections: steady.totals.connections }), 5000);
  check(steady.totals.messages_out_total > 0, "no messages went out");
  const reactorRows = await page.$$eval("#reactors tr", rows => rows.length - 1);
  check(reactorRows === steady.reactors.length, `reactor table has ${reactorRows} rows, /api/stats ${steady.reactors.length}`);

  // Readable on a phone: nothing wider than the screen.
  await page.setViewport({ width: 390, height: 844, isMobile: true });
  await new Promise(r => setTimeout(r, 1200));
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  check(width <= 391, `page is ${width}px wide on a 390px phone`);
}, { timeoutMs: 60000 });
