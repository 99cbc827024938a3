// Headless Chromium for wsgate's browser tests: Debian's chromium (or $CHROMIUM) driven by puppeteer-core.
// A test script imports `run`, gets a fresh page, and fails by throwing; `run` prints the outcome and sets the
// exit status, so the Rust side (tests/common/browser.rs) only checks that the script exited 0.
import puppeteer from "puppeteer-core";

export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

// Flags for a root user on a machine that reaches nothing but loopback: no sandbox (root), and nothing that
// phones home or waits for it.
const FLAGS = [
  "--no-sandbox",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  "--disable-dev-shm-usage",
];

/// Launches Chromium, hands `test` a page, the browser and `newPage()` (another page watched the same way), and
/// exits 0 on success, 1 on any error or after `timeoutMs`. Console errors of the pages fail the test too: a page
/// that throws is broken. `ignoreConsole`: regexps of console errors that are expected (e.g. the browser's own
/// "WebSocket connection failed" while a test has the gateway down).
export async function run(name, test, { timeoutMs = 60000, ignoreConsole = [] } = {}) {
  const timer = setTimeout(() => {
    console.error(`${name}: FAIL: no result within ${timeoutMs} ms`);
    process.exit(1);
  }, timeoutMs);
  let browser;
  try {
    browser = await puppeteer.launch({ executablePath: CHROMIUM, headless: true, args: FLAGS });
    const pageErrors = [];
    const newPage = async () => {
      const page = await browser.newPage();
      page.on("pageerror", e => pageErrors.push(String(e)));
      page.on("console", m => {
        if (m.type() === "error" && !ignoreConsole.some(re => re.test(m.text()))) pageErrors.push(m.text());
      });
      page.on("dialog", d => { pageErrors.push("unexpected dialog: " + d.message()); d.dismiss().catch(() => {}); });
      return page;
    };
    const page = await newPage();
    await test(page, browser, newPage);
    if (pageErrors.length) throw new Error("errors in the page: " + pageErrors.join(" | "));
    console.log(`${name}: ok`);
    process.exitCode = 0;
  } catch (e) {
    console.error(`${name}: FAIL: ${e && e.stack || e}`);
    process.exitCode = 1;
  } finally {
    clearTimeout(timer);
    if (browser) await browser.close().catch(() => {});
  }
}

/// Polls `probe` (sync or async) until it returns a truthy value, which is returned; throws `what` on timeout.
export async function waitFor(probe, what, timeoutMs = 10000, everyMs = 100) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await probe();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise(r => setTimeout(r, everyMs));
  }
}

export function check(cond, message) {
  if (!cond) throw new Error(message);
}

/// The environment variable `name`, or a failure naming it.
export function env(name) {
  const v = process.env[name];
  if (v === undefined || v === "") throw new Error(`environment variable ${name} is not set`);
  return v;
}
