//! `ternforge`: the command line. Each subcommand lives in its own module under `cmd/`; this
//! file only parses the arguments and dispatches.

mod cmd;

use clap::Parser;
use std::process::ExitCode;

/// Generated, proven-equal CPU kernels for ternary (BitNet b1.58) weights.
#[derive(Parser, Debug)]
#[command(name = "ternforge", version, about)]
enum Cli {
    /// List every kernel of the table: compiled?, runnable here?, picked by dispatch?
    Kernels(cmd::kernels::Args),
    /// Measure memory bandwidth, int8 peak and every runnable kernel on this machine.
    Bench(cmd::bench::Args),
}

fn main() -> ExitCode {
    let result = match Cli::parse() {
        Cli::Kernels(a) => cmd::kernels::run(a),
        Cli::Bench(a) => cmd::bench::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ternforge: error: {e}");
            ExitCode::FAILURE
        }
    }
}
