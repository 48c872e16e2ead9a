//! `ternforge convert`: re-encode a model's ternary projections (from f32/f16 by absmean
//! ternarisation, or from another ternary format); atomic write, progress on stderr.

use super::Error;
use std::io::Write;
use ternforge::Format;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Input GGUF.
    #[arg(long = "in")]
    pub input: std::path::PathBuf,
    /// Output GGUF (written atomically).
    #[arg(long, short)]
    pub out: std::path::PathBuf,
    /// Target format: i2s, qk256 (tq2_0), tq1_0, tl1, tl2.
    #[arg(long, short)]
    pub format: String,
}

pub fn run(a: Args) -> Result<(), Error> {
    let target =
        Format::from_name(&a.format).ok_or_else(|| format!("unknown format {:?}", a.format))?;
    let file = ternforge_engine::model::open(&a.input)?;
    let mut err = std::io::stderr().lock();
    let bytes = ternforge_engine::convert::convert(file.bytes(), target, |done, total, name| {
        let width = 30;
        let filled = (done * width).checked_div(total).unwrap_or(width);
        let _ = write!(
            err,
            "\r[{}{}] {done}/{total} {name:<40.40}",
            "#".repeat(filled),
            " ".repeat(width - filled)
        );
        let _ = err.flush();
    })?;
    let _ = writeln!(err);
    drop(err);
    super::atomic_write(&a.out, &bytes)?;
    eprintln!(
        "wrote {} ({} bytes, {})",
        a.out.display(),
        bytes.len(),
        target.name()
    );
    Ok(())
}
