//! `ternforge inspect`: metadata, hyper-parameters and tensors of a GGUF model.

use super::Error;
use ternforge_engine::model::{self, Config};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// GGUF file.
    pub model: std::path::PathBuf,
    /// Also list every tensor.
    #[arg(long)]
    pub tensors: bool,
}

pub fn run(a: Args) -> Result<(), Error> {
    let g = model::open(&a.model)?;
    println!("file:       {}", a.model.display());
    println!("GGUF:       v{}, alignment {}", g.version(), g.alignment());
    println!("tensors:    {}", g.tensor_infos().len());
    match Config::from_gguf(&g) {
        Ok(c) => println!(
            "model:      {} — {} layers, hidden {}, FFN {}, {} heads / {} KV heads (dim {}), vocab {}, ctx {}, rope θ {}, eps {}",
            c.arch, c.n_layer, c.n_embd, c.n_ff, c.n_head, c.n_head_kv, c.head_dim, c.vocab, c.ctx, c.rope_theta, c.eps
        ),
        Err(e) => println!("model:      not runnable: {e}"),
    }
    let mut by_type = std::collections::BTreeMap::<String, (usize, usize)>::new();
    for t in g.tensors() {
        let e = by_type.entry(t.ty.name().to_string()).or_default();
        e.0 += 1;
        e.1 += t.data.len();
    }
    for (ty, (n, b)) in by_type {
        println!("  {ty:>6}: {n:4} tensors, {:.1} MiB", b as f64 / 1048576.0);
    }
    if a.tensors {
        for t in g.tensors() {
            println!("  {:40} {:>6} {:?}", t.name, t.ty.name(), t.dims);
        }
    }
    Ok(())
}
