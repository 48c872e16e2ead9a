//! One module per subcommand; each exposes `Args` (clap) and `run(Args) -> Result<(), Error>`.

pub mod bench;
pub mod chat;
pub mod inspect;
pub mod kernels;
pub mod receipt;
pub mod run;
pub mod serve;
pub mod synth;

/// Error type of the subcommands.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
