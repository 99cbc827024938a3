//! Runs a script of the headless-Chromium harness (tests/browser/, see harness.mjs) with node. scripts/test.sh
//! installs chromium and the npm packages; without them a browser test fails saying what is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Runs `tests/browser/<script>` with `env` added; panics with its output unless it exits 0.
pub fn run_script(script: &str, env: &[(&str, &str)]) {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: apt-get install chromium (scripts/test.sh does), or set CHROMIUM"
    );
    run_node(&[script], env);
}

/// Runs `node --test tests/browser/<file>` (Node's own test runner); panics with its output unless every test
/// passed.
pub fn run_node_tests(file: &str, env: &[(&str, &str)]) {
    run_node(&["--test", file], env);
}

/// Scripts that start the gateway themselves (tests/browser/gateway.mjs) get this build's binary as `WSGATE_BIN`.
fn run_node(args: &[&str], env: &[(&str, &str)]) {
    let dir = browser_dir();
    assert!(
        dir.join("node_modules/puppeteer-core").is_dir() && dir.join("node_modules/ws").is_dir(),
        "tests/browser/node_modules is missing: run `npm ci` in tests/browser (scripts/test.sh does)"
    );
    let script = args.join(" ");
    let out = Command::new("node")
        .args(args)
        .current_dir(&dir)
        .env("WSGATE_BIN", env!("CARGO_BIN_EXE_wsgate"))
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("cannot run node (apt-get install nodejs): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{text}",
        out.status
    );
}
