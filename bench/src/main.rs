//! wsgate-bench: the bundled load generator of wsgate. See bench/README.md.

mod config;
mod coord;
mod hist;
mod inflate;
mod msg;
mod publisher;
mod report;
mod reportgen;
mod result;
mod rng;
mod seq;
mod shared;
mod sys;
mod users;
mod worker;
mod ws;

use clap::Parser;

fn main() {
    let cli = config::Cli::parse();
    let outcome = match &cli.cmd {
        config::Command::Report(a) => reportgen::run(a),
        cmd => config::resolve(cmd).and_then(|cfg| coord::run(&cfg)),
    };
    if let Err(e) = outcome {
        eprintln!("wsgate-bench: error: {e}");
        std::process::exit(1);
    }
}
