//! Configuration loading through the code path `main.rs` uses: TOML file text, then `WSGATE_*` variables, then
//! `--set section.key=value` assignments, then `build()` (typed parse and validation).
//!
//! Input (UTF-8): lines starting with `--set ` are assignments, lines starting with `--env ` are `NAME=VALUE`
//! variables, every other line belongs to the TOML document.
//!
//! Checked: never a panic (a broken config is a start-up error naming the key); an accepted config answers its
//! accessors (`listen_addr`, `api_addr`, ... which assume validation) and `--print-config` output loads back to
//! the same configuration. Key files are not opened here (`key_check` reads the file system; it is not a parser).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::config::{Config, ConfigBuilder, ConfigError};

fn load(toml: &str, env: Vec<(String, String)>, sets: &[&str]) -> Result<Config, ConfigError> {
    let mut builder = ConfigBuilder::new().toml(toml, "fuzz.toml")?;
    builder = builder.env(env.into_iter())?;
    for s in sets {
        builder = builder.set(s)?;
    }
    builder.build()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut toml = String::new();
    let mut env = Vec::new();
    let mut sets = Vec::new();
    for line in text.split_inclusive('\n') {
        if let Some(s) = line.strip_prefix("--set ") {
            sets.push(s.trim_end_matches(['\r', '\n']));
        } else if let Some(v) = line.strip_prefix("--env ") {
            let v = v.trim_end_matches(['\r', '\n']);
            let (k, v) = v.split_once('=').unwrap_or((v, ""));
            env.push((k.to_string(), v.to_string()));
        } else {
            toml.push_str(line);
        }
    }
    let Ok(config) = load(&toml, env, &sets) else {
        return;
    };
    let _ = config.listen_addr();
    let _ = config.api_addr();
    let _ = config.plain_listen_addr();
    let threads = config.reactor_threads();
    assert!((1..=64).contains(&threads));
    let printed = config.to_toml();
    let again = match load(&printed, Vec::new(), &[]) {
        Ok(c) => c,
        Err(e) => panic!("--print-config output does not load back: {e}\n{printed}"),
    };
    assert_eq!(
        again.to_toml(),
        printed,
        "--print-config does not round-trip"
    );
});
