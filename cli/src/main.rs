//! `ternforge`: the command line. Each subcommand lives in its own module under `cmd/`; this
//! file only parses the arguments and dispatches.

mod cmd;
mod prio;
mod serve;

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
    /// Generate text with a BitNet b1.58 GGUF model (default: a synthesized tiny model).
    Run(cmd::run::Args),
    /// Interactive chat with an instruct model (its chat template, KV cache across turns).
    Chat(cmd::chat::Args),
    /// Convert a GGUF model's projections to a ternary format (f32/f16 via absmean).
    Convert(cmd::convert::Args),
    /// Write a random-weight model with real BitNet b1.58 shapes.
    Synth(cmd::synth::Args),
    /// Show a GGUF model's metadata and tensors.
    Inspect(cmd::inspect::Args),
    /// Check run receipts.
    Receipt(cmd::receipt::Args),
    /// OpenAI-compatible HTTP server: /v1/completions, /v1/chat/completions, /health, /metrics.
    Serve(cmd::serve::Args),
}

/// Restore the default SIGPIPE action so `ternforge kernels | head` ends quietly instead of
/// panicking in `println!` (Rust ignores SIGPIPE by default).
#[cfg(unix)]
fn default_sigpipe() {
    extern "C" {
        fn signal(signum: i32, handler: usize) -> usize;
    }
    const SIGPIPE: i32 = 13; // Linux and macOS
    const SIG_DFL: usize = 0;
    // SAFETY: `signal` is the C library function with this signature; it is called once at
    // start-up, before any thread exists, with the default disposition.
    unsafe {
        signal(SIGPIPE, SIG_DFL);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Not for the server: a client closing its socket must not kill it.
    #[cfg(unix)]
    if !matches!(cli, Cli::Serve(_)) {
        default_sigpipe();
    }
    let result = match cli {
        Cli::Kernels(a) => cmd::kernels::run(a),
        Cli::Bench(a) => cmd::bench::run(a),
        Cli::Run(a) => cmd::run::run(a),
        Cli::Chat(a) => cmd::chat::run(a),
        Cli::Convert(a) => cmd::convert::run(a),
        Cli::Synth(a) => cmd::synth::run(a),
        Cli::Inspect(a) => cmd::inspect::run(a),
        Cli::Receipt(a) => cmd::receipt::run(a),
        Cli::Serve(a) => cmd::serve::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ternforge: error: {e}");
            ExitCode::FAILURE
        }
    }
}
