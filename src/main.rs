//! `wsgate`: the gateway binary. See README.md for flags and config keys.

use clap::Parser;
use std::process::ExitCode;
use wsgate::config::{ConfigBuilder, ConfigError};
use wsgate::server::Server;

#[derive(Parser)]
#[command(
    name = "wsgate",
    version,
    about = "epoll-native zero-copy WebSocket edge gateway"
)]
struct Cli {
    /// TOML config file (keys as in `--print-config`).
    #[arg(long, value_name = "FILE")]
    config: Option<String>,
    /// Sets one config key, e.g. `--set ws.max_message_size=16777216` (repeatable; wins over file and env).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    set: Vec<String>,
    /// Client listener (server.listen), e.g. 0.0.0.0:8080.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// HTTP API listener (api.listen), e.g. 127.0.0.1:8081.
    #[arg(long, value_name = "ADDR")]
    api_listen: Option<String>,
    /// Reactor threads (server.threads); 0 = one per CPU.
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// The reactors' OS layer (server.io_backend): epoll, uring or auto.
    #[arg(long, value_name = "BACKEND")]
    io_backend: Option<String>,
    /// Enables the debug echo endpoint at PATH (debug.echo_path).
    #[arg(long, value_name = "PATH")]
    echo_path: Option<String>,
    /// Prints the effective configuration as TOML and exits.
    #[arg(long)]
    print_config: bool,
    /// Prints the io backend server.io_backend selects on this kernel, and why, then exits (status 1 if it is
    /// refused).
    #[arg(long)]
    print_io_backend: bool,
}

fn load(cli: &Cli) -> Result<wsgate::config::Config, ConfigError> {
    let mut builder = ConfigBuilder::new().key_check(wsgate::auth::check_keys);
    if let Some(path) = &cli.config {
        builder = builder.file(path)?;
    }
    builder = builder.env(std::env::vars())?;
    for s in &cli.set {
        builder = builder.set(s)?;
    }
    let quoted = |v: &str| format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""));
    if let Some(v) = &cli.listen {
        builder = builder.set(&format!("server.listen={}", quoted(v)))?;
    }
    if let Some(v) = &cli.api_listen {
        builder = builder.set(&format!("api.listen={}", quoted(v)))?;
    }
    if let Some(v) = cli.threads {
        builder = builder.set(&format!("server.threads={v}"))?;
    }
    if let Some(v) = &cli.io_backend {
        builder = builder.set(&format!("server.io_backend={}", quoted(v)))?;
    }
    if let Some(v) = &cli.echo_path {
        builder = builder.set(&format!("debug.echo_path={}", quoted(v)))?;
    }
    builder.build()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut config = match load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wsgate: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.print_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    if cli.print_io_backend {
        return match wsgate::server::choose_io_backend(config.server.io_backend) {
            Ok((_, line)) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("wsgate: {e}");
                ExitCode::FAILURE
            }
        };
    }
    wsgate::logging::init(&config.log.level);

    let signals = match wsgate::signals::block() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("wsgate: cannot set up signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    wsgate::limits::raise_nofile(&mut config);

    let server = match Server::start(config.clone()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("wsgate: {e}");
            return ExitCode::FAILURE;
        }
    };
    let scheme = if server.tls.is_some() { "wss" } else { "ws" };
    log::info!(
        "listening: {scheme}://{}{} ({} reactors), api http://{}",
        server.ws_addr,
        config.server.ws_path,
        config.reactor_threads(),
        server.api_addr
    );
    if config.auth.mode == wsgate::config::AuthMode::None {
        log::warn!(
            "auth.mode = \"none\": ANYONE can connect and subscribe to ANY channel; set auth.mode = \"jwt\" \
             (docs/PROTOCOL.md) before exposing this gateway"
        );
    }
    if let Some(addr) = server.plain_addr {
        log::info!(
            "listening: ws://{addr}{} (plaintext)",
            config.server.ws_path
        );
    }
    if config.debug.demo_relay {
        log::warn!(
            "debug.demo_relay: clients may publish to demo:* channels (op msg with a channel)"
        );
    }
    if !config.debug.echo_path.is_empty() {
        log::warn!("debug echo endpoint enabled at {}", config.debug.echo_path);
    }
    // The one machine-readable line: tests and bench/run.sh read the bound ports from it.
    // With TLS: `wsgate ready wss=IP:PORT api=IP:PORT[ ws=IP:PORT]` (ws= only for tls.plain_listen).
    match (&server.tls, server.plain_addr) {
        (None, _) => eprintln!("wsgate ready ws={} api={}", server.ws_addr, server.api_addr),
        (Some(_), None) => eprintln!(
            "wsgate ready wss={} api={}",
            server.ws_addr, server.api_addr
        ),
        (Some(_), Some(plain)) => eprintln!(
            "wsgate ready wss={} api={} ws={plain}",
            server.ws_addr, server.api_addr
        ),
    }

    loop {
        match signals.wait() {
            wsgate::signals::Signal::Terminate => break,
            wsgate::signals::Signal::Reload => {
                if server.tls.is_some() {
                    let _ = server.reload_tls(); // logs the outcome; a failure keeps the old certificate
                } else {
                    log::info!("SIGHUP: nothing to reload (TLS is not configured)");
                }
            }
        }
    }
    log::info!(
        "shutting down: closing connections (up to {} s)",
        config.server.shutdown_timeout
    );
    server.shutdown();
    log::info!("bye");
    ExitCode::SUCCESS
}
