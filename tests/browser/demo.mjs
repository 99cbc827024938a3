// What the demo page tests (demo_page.mjs, demo_fallback.mjs) do with clients/js/demo/index.html: read its list,
// add items as a user would, wait for items, and print timed steps.
import { waitFor } from "./harness.mjs";

/// Config that gives the demo channels history, so a page that lost its connection recovers what it missed.
export const DEMO_HISTORY = `
[[channels.namespace]]
prefix = "demo:"
history_size = 1000
recover = true
`;

/// Adds an item to the list from the backend's side (the API), as a page would through the relay.
export function publishItem(gw, text) {
  const item = { id: "api-" + text, text, at: Date.now(), by: "api" };
  return gw.publish("demo:list", { from: "api", data: { t: "add", item } });
}

/// Whether the page's log (newest line first) says its last resubscribe recovered everything from the channel's
/// history.
export async function recoveredFromHistory(page) {
  const log = await page.$eval("#log", l => l.textContent);
  const last = log.split("\n").find(line => line.includes("resubscribed:"));
  return !!last && last.includes("resubscribed: nothing missed");
}

/// A logger of steps with the seconds since the script started.
export function stepper(name) {
  const started = Date.now();
  return text => console.log(`${name}: ${((Date.now() - started) / 1000).toFixed(1)} s: ${text}`);
}

/// The texts of the page's list.
export const items = page => page.evaluate(() => window.demo.items());

/// The SDK client's state and transport.
export const info = page =>
  page.evaluate(() => ({ state: window.demo.client.state, transport: window.demo.client.transport }));

/// Types `text` into the form and submits it, as a user would (without focus games between background tabs).
export async function add(page, text) {
  await page.$eval("#text", (input, t) => { input.value = t; }, text);
  await page.$eval("#add", form => form.requestSubmit());
}

/// Waits until the page's list holds every one of `texts`; on timeout the error shows the list and the page's log.
export async function hasAll(page, texts, what) {
  try {
    await waitFor(async () => {
      const have = await items(page);
      return texts.every(t => have.includes(t));
    }, what, 15000);
  } catch (e) {
    const log = await page.$eval("#log", l => l.textContent);
    throw new Error(`${e.message}; the page has ${JSON.stringify(await items(page))}; its log:\n${log}`);
  }
}
