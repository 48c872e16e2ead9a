//! One module per subcommand; each exposes `Args` (clap) and `run(Args) -> Result<(), Error>`.

pub mod bench;
pub mod bench_decode;
pub mod chat;
pub mod convert;
pub mod inspect;
pub mod kernels;
pub mod receipt;
pub mod run;
pub mod serve;
pub mod synth;

/// `--kv-cache` values (`f16`, `f32`).
pub fn parse_kv(s: &str) -> Result<ternforge_engine::kv::KvType, String> {
    ternforge_engine::kv::KvType::parse(s)
        .ok_or_else(|| format!("unknown KV cache type {s:?} (f16, f32)"))
}

/// Error type of the subcommands.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Write `bytes` to `path` atomically: a temporary file in the same directory, synced, then
/// renamed over the target (removed again on failure).
pub fn atomic_write(path: &std::path::Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let res = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    Ok(res?)
}
