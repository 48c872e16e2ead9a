//! Generates the ternforge kernels from the table (`kernels/table.rs`) into `OUT_DIR`.
//!
//! The ISAs compiled are chosen by the cargo features `avx2`, `avx512`, `neon` (none given =
//! every ISA of the target architecture; scalar always). Generated files are formatted and can
//! be listed with `ternforge kernels --files` / shown with `ternforge kernels --show ID`.

use std::path::PathBuf;

fn main() {
    println!("cargo::rerun-if-changed=kernels/table.rs");
    println!("cargo::rerun-if-changed=kernels-gen/src");
    println!("cargo::rerun-if-changed=build.rs");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let features: Vec<&str> = ["avx2", "avx512", "neon"]
        .into_iter()
        .filter(|f| std::env::var(format!("CARGO_FEATURE_{}", f.to_uppercase())).is_ok())
        .collect();
    let isas = ternforge_gen::compiled_isas(&arch, &features);
    for isa in ternforge_gen::table::Isa::ALL {
        println!("cargo::rustc-check-cfg=cfg(tf_isa_{})", isa.name());
        if isas.contains(&isa) {
            println!("cargo::rustc-cfg=tf_isa_{}", isa.name());
        }
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("generated");
    std::fs::create_dir_all(&out).expect("create OUT_DIR/generated");
    let out_str = out
        .to_str()
        .expect("OUT_DIR is not UTF-8")
        .replace('\\', "/");
    let files = match ternforge_gen::generate(&isas, &out_str) {
        Ok(f) => f,
        Err(e) => panic!("ternforge kernel generation failed:\n{e}"),
    };
    let mut names = Vec::new();
    for f in files {
        let path = out.join(&f.name);
        // keep mtimes stable when nothing changed
        if std::fs::read_to_string(&path).ok().as_deref() != Some(f.contents.as_str()) {
            std::fs::write(&path, &f.contents)
                .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        }
        names.push(f.name);
    }
    let isa_names: Vec<&str> = isas.iter().map(|i| i.name()).collect();
    println!("cargo::rustc-env=TERNFORGE_GENERATED_DIR={out_str}");
    println!(
        "cargo::rustc-env=TERNFORGE_COMPILED_ISAS={}",
        isa_names.join(",")
    );
    println!(
        "cargo::rustc-env=TERNFORGE_BUILD_FEATURES={}",
        features.join(",")
    );
}
