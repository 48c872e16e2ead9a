//! `ternforge synth`: write a random-weight model with real BitNet b1.58 shapes.

use super::Error;
use ternforge::Format;
use ternforge_engine::synth::{synthesize, Shape};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// `tiny` (tests) or `2b4t` (BitNet b1.58 2B4T shapes, for benchmarks).
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Ternary format of the projections (i2s, qk256/tq2_0, tq1_0, tl1, tl2).
    #[arg(long, default_value = "i2s")]
    pub format: String,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Output file (written atomically).
    #[arg(long, short)]
    pub out: std::path::PathBuf,
}

pub fn run(a: Args) -> Result<(), Error> {
    let f = Format::from_name(&a.format).ok_or_else(|| format!("unknown format {:?}", a.format))?;
    let shape = Shape::from_name(&a.preset)
        .ok_or_else(|| format!("unknown preset {:?} (tiny, 2b4t)", a.preset))?;
    let bytes = synthesize(shape, f, a.seed)?;
    super::atomic_write(&a.out, &bytes)?;
    eprintln!(
        "wrote {} ({} bytes, {} {})",
        a.out.display(),
        bytes.len(),
        a.preset,
        f.name()
    );
    Ok(())
}
