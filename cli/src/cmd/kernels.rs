//! `ternforge kernels`: the kernel table of this build, what this CPU runs and what dispatch
//! picks; `--files` lists the generated sources, `--show` prints one.

use super::Error;
use serde::Serialize;
use ternforge::{cpu, dispatch, Format, KernelEntry, KernelOp, Tile, KERNELS, SOURCES};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// List the generated source files of this build.
    #[arg(long)]
    files: bool,
    /// Print the generated source of a kernel id (`i2s.avx2.mm4x1`) or module (`i2s_avx2`).
    #[arg(long, value_name = "KERNEL_OR_MODULE")]
    show: Option<String>,
}

#[derive(Serialize)]
struct KernelRow {
    id: &'static str,
    format: &'static str,
    isa: &'static str,
    op: String,
    module: &'static str,
    compiled: bool,
    runnable: bool,
    /// Which dispatch decisions pick this kernel: `m=1`, `m=128`, `quantize`, `dequantize`.
    picked: Vec<&'static str>,
}

#[derive(Serialize)]
struct Report {
    cpu_features: Vec<&'static str>,
    compiled_isas: Vec<&'static str>,
    build_features: Vec<&'static str>,
    dispatch_isa: &'static str,
    dispatch_overridden: bool,
    generated_dir: &'static str,
    kernels: Vec<KernelRow>,
}

fn op_name(op: KernelOp) -> String {
    match op {
        KernelOp::Quantize => "quantize".into(),
        KernelOp::Dequantize => "dequantize".into(),
        KernelOp::Matmul(t) if t.cols == 1 => format!("gemv {}x{}", t.rows, t.cols),
        KernelOp::Matmul(t) if t.panel && t.min_batch > t.cols => {
            format!("gemm panel {}x{} m>={}", t.rows, t.cols, t.min_batch)
        }
        KernelOp::Matmul(t) if t.panel => format!("gemm panel {}x{}", t.rows, t.cols),
        KernelOp::Matmul(t) => format!("gemm {}x{}", t.rows, t.cols),
    }
}

fn split(s: &'static str) -> Vec<&'static str> {
    s.split(',').filter(|x| !x.is_empty()).collect()
}

fn same(a: &KernelEntry, b: &KernelEntry) -> bool {
    a.id == b.id
}

pub fn run(args: Args) -> Result<(), Error> {
    if let Some(name) = &args.show {
        return show(name);
    }
    if args.files {
        return files(args.json);
    }
    let d = dispatch()?;
    let mm = KernelOp::Matmul(Tile::new(1, 1));
    let mut rows = Vec::new();
    for e in KERNELS {
        let mut picked = Vec::new();
        let picks: [(&'static str, KernelOp, usize); 4] = [
            ("m=1", mm, 1),
            ("m=128", mm, 128),
            ("quantize", KernelOp::Quantize, 1),
            ("dequantize", KernelOp::Dequantize, 1),
        ];
        for (tag, op, m) in picks {
            if std::mem::discriminant(&op) != std::mem::discriminant(&e.op) {
                continue;
            }
            if let Ok(s) = d.select(e.format, op, m) {
                if same(s, e) {
                    picked.push(tag);
                }
            }
        }
        rows.push(KernelRow {
            id: e.id,
            format: e.format.name(),
            isa: e.isa.name(),
            op: op_name(e.op),
            module: e.module,
            compiled: e.compiled(),
            runnable: e.runnable(),
            picked,
        });
    }
    let report = Report {
        cpu_features: cpu::feature_names(),
        compiled_isas: split(ternforge::COMPILED_ISAS),
        build_features: split(ternforge::BUILD_FEATURES),
        dispatch_isa: d.isa.name(),
        dispatch_overridden: d.overridden,
        generated_dir: ternforge::GENERATED_DIR,
        kernels: rows,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "CPU features:   {}",
        if report.cpu_features.is_empty() {
            "(none beyond scalar)".to_string()
        } else {
            report.cpu_features.join(" ")
        }
    );
    println!("compiled ISAs:  {}", report.compiled_isas.join(" "));
    println!(
        "build features: {}",
        if report.build_features.is_empty() {
            "(none: every ISA of the target)".to_string()
        } else {
            report.build_features.join(" ")
        }
    );
    println!(
        "dispatch:       {}{}",
        report.dispatch_isa,
        if report.dispatch_overridden {
            " (TERNFORGE_ISA override)"
        } else {
            " (detected)"
        }
    );
    println!("generated dir:  {}", report.generated_dir);
    println!();
    let headers = [
        "id",
        "format",
        "isa",
        "op",
        "compiled",
        "runnable",
        "picked by dispatch",
    ];
    let cells: Vec<[String; 7]> = report
        .kernels
        .iter()
        .map(|r| {
            [
                r.id.to_string(),
                r.format.to_string(),
                r.isa.to_string(),
                r.op.clone(),
                yes_no(r.compiled),
                yes_no(r.runnable),
                r.picked.join(" "),
            ]
        })
        .collect();
    print_table(&headers, &cells);
    println!();
    for f in Format::ALL {
        println!("{:<6} {}", f.name(), f.spec().doc);
    }
    Ok(())
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

/// Print left-aligned columns.
pub fn print_table<const N: usize>(headers: &[&str; N], rows: &[[String; N]]) {
    let mut w = headers.map(str::len);
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(headers.iter().map(|s| s.to_string()).collect());
    line(w.iter().map(|&n| "-".repeat(n)).collect());
    for r in rows {
        line(r.to_vec());
    }
}

fn files(json: bool) -> Result<(), Error> {
    let dir = ternforge::GENERATED_DIR;
    let mut list: Vec<(String, usize)> = SOURCES
        .iter()
        .map(|(m, s)| (format!("{dir}/{m}.rs"), s.len()))
        .collect();
    let registry = format!("{dir}/registry.rs");
    let size = std::fs::metadata(&registry).map_or(0, |m| m.len() as usize);
    list.push((registry, size));
    if json {
        let v: Vec<_> = list
            .iter()
            .map(|(p, n)| serde_json::json!({ "path": p, "bytes": n }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for (p, n) in &list {
            if *n > 0 {
                println!("{p}  ({n} bytes)");
            } else {
                println!("{p}");
            }
        }
    }
    Ok(())
}

fn show(name: &str) -> Result<(), Error> {
    let module = KERNELS
        .iter()
        .find(|e| e.id == name)
        .map(|e| e.module)
        .unwrap_or(name);
    if let Some((_, src)) = SOURCES.iter().find(|(m, _)| *m == module) {
        print!("{src}");
        return Ok(());
    }
    if let Some(e) = KERNELS.iter().find(|e| e.module == module) {
        return Err(format!(
            "{} is not compiled into this build (ISA {}; compiled: {})",
            module,
            e.isa.name(),
            ternforge::COMPILED_ISAS
        )
        .into());
    }
    Err(format!(
        "no kernel or module {name:?}; modules: {}",
        SOURCES
            .iter()
            .map(|(m, _)| *m)
            .collect::<Vec<_>>()
            .join(", ")
    )
    .into())
}
