//! The `ternforge` binary end to end: run on the synthesized default model with a receipt,
//! verify it (and a tampered copy), synth + inspect + run a file in every format, and the
//! dispatch override errors.

use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ternforge"))
}

/// The command succeeded; otherwise fail with `what` and its stderr.
fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ternforge-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

#[test]
fn run_default_model_writes_a_verifiable_receipt() {
    let r = tmp("receipt.json");
    let out = bin()
        .args(["run", "-n", "6", "--receipt"])
        .arg(&r)
        .output()
        .unwrap();
    assert_ok(&out, "run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("synthesized") && err.contains("tok/s"),
        "{err}"
    );
    let ok = bin().args(["receipt", "verify"]).arg(&r).output().unwrap();
    assert_ok(&ok, "receipt verify");
    // tampering with a timing or a kernel id is detected
    let text = std::fs::read_to_string(&r).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["generated_tokens"], 6);
    let bad = tmp("bad.json");
    std::fs::write(&bad, text.replace("\"i2s.", "\"nope.")).unwrap();
    let no = bin()
        .args(["receipt", "verify"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!no.status.success());
    assert!(String::from_utf8_lossy(&no.stderr).contains("not in this build"));
}

#[test]
fn synth_inspect_and_run_every_format() {
    let mut outputs = Vec::new();
    for f in ["i2s", "tq2_0", "tq1_0", "tl1", "tl2"] {
        let p = tmp(&format!("tiny-{f}.gguf"));
        let s = bin()
            .args(["synth", "--format", f, "--out"])
            .arg(&p)
            .output()
            .unwrap();
        assert_ok(&s, f);
        let i = bin().arg("inspect").arg(&p).output().unwrap();
        assert!(i.status.success());
        assert!(String::from_utf8_lossy(&i.stdout).contains("bitnet-b1.58"));
        let r = bin()
            .args(["run", "-n", "12", "-p", "abc", "--model"])
            .arg(&p)
            .output()
            .unwrap();
        assert_ok(&r, f);
        outputs.push(r.stdout);
    }
    // same synthesized weights in every format: same greedy text
    assert!(outputs.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn bad_inputs_are_clear_errors() {
    let p = tmp("garbage.gguf");
    std::fs::write(&p, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    let r = bin().args(["run", "--model"]).arg(&p).output().unwrap();
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("error"));
    let r = bin().args(["run", "--top-p", "0"]).output().unwrap();
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("top_p"));
    let r = bin()
        .args(["run"])
        .env("TERNFORGE_ISA", "bogus")
        .output()
        .unwrap();
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("unknown ISA"));
}

#[test]
fn convert_between_formats_keeps_the_tokens() {
    let src = tmp("conv-src.gguf");
    assert!(bin()
        .args(["synth", "--format", "i2s", "--seed", "9", "--out"])
        .arg(&src)
        .status()
        .unwrap()
        .success());
    let run = |p: &std::path::Path| {
        let o = bin()
            .args(["run", "-n", "12", "-p", "xyz", "--model"])
            .arg(p)
            .output()
            .unwrap();
        assert_ok(&o, "run");
        o.stdout
    };
    let want = run(&src);
    let mut prev = src.clone();
    for f in ["tq1_0", "tl2", "qk256", "i2s"] {
        let out = tmp(&format!("conv-{f}.gguf"));
        let o = bin()
            .args(["convert", "--format", f, "--in"])
            .arg(&prev)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert_ok(&o, f);
        assert_eq!(run(&out), want, "after converting to {f}");
        prev = out;
    }
    // an unknown target format is an error, and nothing is written
    let out = tmp("conv-bad.gguf");
    let o = bin()
        .args(["convert", "--format", "q4_0", "--in"])
        .arg(&src)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!o.status.success() && !out.exists());
}

#[test]
fn bench_decode_reports_floor_and_gemm_prefill() {
    let out = bin()
        .args([
            "bench",
            "--decode",
            "--quick",
            "--json",
            "--synth-preset",
            "tiny",
            "--prompt-tokens",
            "9",
            "--tokens",
            "5",
        ])
        .output()
        .unwrap();
    assert_ok(&out, "bench --decode");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["prompt_tokens"], 9);
    assert_eq!(v["decode_tokens"], 5);
    for key in [
        "dram_read_gbs",
        "decode_tokens_per_second",
        "floor_tokens_per_second",
        "pct_of_floor",
    ] {
        let x = v[key].as_f64().unwrap_or(f64::NAN);
        assert!(x.is_finite() && x > 0.0, "{key} = {x}");
    }
    // the 9-token prompt runs as one batch through GEMM tiles (more than one column), the
    // decode through GEMV tiles (`mmRx1`)
    let ids = |k: &str| -> Vec<String> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let prefill = ids("prefill_kernels");
    assert!(
        !prefill.is_empty() && prefill.iter().all(|id| !id.ends_with("x1")),
        "{prefill:?}"
    );
    let decode = ids("decode_kernels");
    assert!(
        !decode.is_empty() && decode.iter().all(|id| id.ends_with("x1")),
        "{decode:?}"
    );
    // bad arguments are errors, not panics
    let bad = bin()
        .args([
            "bench",
            "--decode",
            "--synth-preset",
            "tiny",
            "--tokens",
            "0",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--tokens"));
}
