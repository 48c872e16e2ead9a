//! Bad input gives a typed `KernelError`, never a panic (nor undefined behaviour), for every
//! format and kernel of the registry. Cases that could crash the process (activations prepared
//! for another kernel, the process-wide `TERNFORGE_ISA` override) run in a child process of this
//! test binary, so a crash is reported as that test's failure.

mod common;

use common::random_tensor;
use ternforge::table::CodeRule;
use ternforge::{
    dequantize_with, matmul_prepared, matmul_with, prepare_for, quantize, quantize_acts,
    quantize_with, Dispatch, Format, Isa, KernelEntry, KernelError, KernelOp, PackedWeights,
    QuantizedActs, KERNELS,
};

fn runnable(op: fn(&KernelOp) -> bool) -> impl Iterator<Item = &'static KernelEntry> {
    KERNELS.iter().filter(move |e| e.runnable() && op(&e.op))
}

fn is_quantize(o: &KernelOp) -> bool {
    *o == KernelOp::Quantize
}
fn is_dequantize(o: &KernelOp) -> bool {
    *o == KernelOp::Dequantize
}
fn is_matmul(o: &KernelOp) -> bool {
    matches!(o, KernelOp::Matmul(_))
}

/// A K valid for every format of the table (multiple of 64, 128, 256, 3 and 4).
const K: usize = 768;

fn shape_err(r: Result<impl std::fmt::Debug, KernelError>, what: &str) {
    match r {
        Err(KernelError::Shape { .. }) => {}
        other => panic!("{what}: expected KernelError::Shape, got {other:?}"),
    }
}

fn len_err(r: Result<impl std::fmt::Debug, KernelError>, what: &str) {
    match r {
        Err(KernelError::BufferLength { .. }) => {}
        other => panic!("{what}: expected KernelError::BufferLength, got {other:?}"),
    }
}

fn acts_err(r: Result<impl std::fmt::Debug, KernelError>, what: &str) {
    match r {
        Err(KernelError::Activations(_)) => {}
        other => panic!("{what}: expected KernelError::Activations, got {other:?}"),
    }
}

#[test]
fn quantize_bad_shapes_and_lengths() {
    for e in runnable(is_quantize) {
        let f = e.format;
        let id = e.id;
        len_err(
            quantize_with(e, f, &vec![0.5; 3 * K - 1], 3, K),
            &format!("{id} short src"),
        );
        len_err(
            quantize_with(e, f, &vec![0.5; 3 * K + 1], 3, K),
            &format!("{id} long src"),
        );
        shape_err(quantize_with(e, f, &[], 0, K), &format!("{id} n = 0"));
        shape_err(quantize_with(e, f, &[], 3, 0), &format!("{id} k = 0"));
        shape_err(
            quantize_with(e, f, &[], 1 << 20, 1 << 21),
            &format!("{id} too many elements"),
        );
        let spec = f.spec();
        if !spec.is_lut() {
            let k = spec.block_elems + 1;
            shape_err(
                quantize_with(e, f, &vec![0.5; 2 * k], 2, k),
                &format!("{id} K not a multiple of the block"),
            );
        }
        // a kernel of another op or another format is refused
        let other = KERNELS
            .iter()
            .find(|o| o.format != f && o.op == KernelOp::Quantize);
        if let Some(o) = other {
            assert!(
                matches!(
                    quantize_with(o, f, &vec![0.5; K], 1, K),
                    Err(KernelError::NoKernel(_))
                ),
                "{} used for {f}",
                o.id
            );
        }
    }
    shape_err(quantize(Format::I2S, &[], 0, 128), "dispatched n = 0");
}

#[test]
fn packed_weights_validation() {
    for f in Format::ALL {
        let spec = f.spec();
        let mut rng = common::Rng::new(1);
        let n = 5;
        let data = random_tensor(f, n, K, &mut rng);
        assert!(PackedWeights::new(f, &data, n, K).is_ok());
        len_err(
            PackedWeights::new(f, &data[1..], n, K),
            &format!("{f} short"),
        );
        let mut long = data.clone();
        long.push(0);
        len_err(PackedWeights::new(f, &long, n, K), &format!("{f} long"));
        len_err(PackedWeights::new(f, &[], n, K), &format!("{f} empty"));
        shape_err(PackedWeights::new(f, &data, 0, K), &format!("{f} n = 0"));
        shape_err(PackedWeights::new(f, &data, n, 0), &format!("{f} k = 0"));
        shape_err(
            PackedWeights::new(f, &data, 1, 1 << 25),
            &format!("{f} K above 2^24"),
        );
        if !spec.is_lut() {
            shape_err(
                PackedWeights::new(f, &data, n, K + spec.block_elems / 2),
                &format!("{f} K not a multiple of the block"),
            );
        }
        // corrupt codes: 0xff holds 2-bit code 3 / nibble 15 (beyond every LUT index range)
        let mut bad = data.clone();
        bad[0] = 0xff;
        match spec.codes {
            CodeRule::Base3 => {
                // every byte is a valid base-3 code byte: accepted, and decodes without panic
                let w = PackedWeights::new(f, &bad, n, K).expect("base-3 bytes are all valid");
                for e in runnable(is_dequantize).filter(|e| e.format == f) {
                    let mut out = vec![0f32; n * K];
                    dequantize_with(e, &w, &mut out).unwrap();
                }
            }
            _ => match PackedWeights::new(f, &bad, n, K) {
                Err(KernelError::InvalidCode {
                    format,
                    offset: 0,
                    value: 0xff,
                }) if format == f => {}
                other => panic!("{f}: corrupt byte 0 gave {other:?}"),
            },
        }
        if let CodeRule::Packed2 { .. } = spec.codes {
            // code 3 in the last code byte of the last block
            let mut bad = data.clone();
            let last =
                (n * K / spec.block_elems - 1) * spec.block_bytes() + spec.block_code_bytes - 1;
            bad[last] = (bad[last] & !3) | 3;
            assert!(
                matches!(
                    PackedWeights::new(f, &bad, n, K),
                    Err(KernelError::InvalidCode { offset, .. }) if offset == last
                ),
                "{f}: code 3 at byte {last} not rejected"
            );
        }
    }
}

#[test]
fn dequantize_bad_output() {
    for e in runnable(is_dequantize) {
        let f = e.format;
        let data = random_tensor(f, 3, K, &mut common::Rng::new(2));
        let w = PackedWeights::new(f, &data, 3, K).unwrap();
        len_err(
            dequantize_with(e, &w, &mut vec![0f32; 3 * K - 1]),
            &format!("{} short out", e.id),
        );
        len_err(
            dequantize_with(e, &w, &mut vec![0f32; 3 * K + 1]),
            &format!("{} long out", e.id),
        );
    }
}

#[test]
fn matmul_bad_activations_and_output() {
    let x: Vec<f32> = (0..2 * K).map(|i| (i as f32 * 0.37).sin()).collect();
    let acts = quantize_acts(&x, 2, K).unwrap();
    // another K valid for every format
    let half = quantize_acts(&x, 1, 2 * K).unwrap();
    len_err(quantize_acts(&x, 3, K), "quantize_acts length");
    for e in runnable(is_matmul) {
        let f = e.format;
        let id = e.id;
        let n = 7;
        let data = random_tensor(f, n, K, &mut common::Rng::new(3));
        let w = PackedWeights::new(f, &data, n, K).unwrap();
        let mut out = vec![0f32; 2 * n];
        assert!(matmul_with(e, &w, &acts, &mut out).is_ok(), "{id}");
        acts_err(
            matmul_with(e, &w, &half, &mut out),
            &format!("{id} activations with 2K"),
        );
        len_err(
            matmul_with(e, &w, &acts, &mut vec![0f32; 2 * n - 1]),
            &format!("{id} short out"),
        );
        len_err(
            matmul_with(e, &w, &acts, &mut vec![0f32; 2 * n + 1]),
            &format!("{id} long out"),
        );
        let empty = quantize_acts(&[], 0, K).unwrap();
        acts_err(
            matmul_with(e, &w, &empty, &mut []),
            &format!("{id} no activation rows"),
        );
        // hand-made inconsistent activations (public fields)
        let mut short = acts.clone();
        short.q.pop();
        acts_err(
            matmul_with(e, &w, &short, &mut out),
            &format!("{id} short q"),
        );
        let mut noscale = acts.clone();
        noscale.scale.pop();
        acts_err(
            matmul_with(e, &w, &noscale, &mut out),
            &format!("{id} missing scale"),
        );
        let mut nosum = acts.clone();
        nosum.sum.clear();
        acts_err(
            matmul_with(e, &w, &nosum, &mut out),
            &format!("{id} missing sums"),
        );
        if !f.spec().is_lut() {
            let odd = QuantizedActs::from_parts(1, 100, vec![1; 100], vec![1.0]).unwrap();
            acts_err(
                prepare_for(e, &odd),
                &format!("{id} K not a multiple of the block"),
            );
        }
        // prepared for another K
        let p_half = prepare_for(e, &half).unwrap();
        acts_err(
            matmul_prepared(e, &w, &p_half, &mut out),
            &format!("{id} prepared with 2K"),
        );
        // a non-matmul kernel is refused
        let q = KERNELS
            .iter()
            .find(|o| o.format == f && o.op == KernelOp::Quantize)
            .unwrap();
        assert!(
            matches!(prepare_for(q, &acts), Err(KernelError::NoKernel(_))),
            "{id}"
        );
        assert!(
            matches!(
                matmul_with(q, &w, &acts, &mut out),
                Err(KernelError::NoKernel(_))
            ),
            "{id}"
        );
    }
}

#[test]
fn kernels_this_build_or_cpu_cannot_run() {
    let data = random_tensor(Format::I2S, 4, K, &mut common::Rng::new(4));
    let w = PackedWeights::new(Format::I2S, &data, 4, K).unwrap();
    let acts = quantize_acts(&vec![0.25; K], 1, K).unwrap();
    let mut checked = 0;
    for e in KERNELS.iter().filter(|e| !e.runnable()) {
        let want = if e.compiled() {
            KernelError::IsaUnsupported(e.isa)
        } else {
            KernelError::IsaNotCompiled(e.isa)
        };
        let src = vec![0.5f32; 4 * K];
        let got = match e.op {
            KernelOp::Quantize => quantize_with(e, e.format, &src, 4, K).map(|_| ()),
            KernelOp::Dequantize => {
                let d = random_tensor(e.format, 4, K, &mut common::Rng::new(5));
                let w = PackedWeights::new(e.format, &d, 4, K).unwrap();
                dequantize_with(e, &w, &mut vec![0f32; 4 * K])
            }
            KernelOp::Matmul(_) if e.format == Format::I2S => {
                matmul_with(e, &w, &acts, &mut [0f32; 4])
            }
            KernelOp::Matmul(_) => prepare_for(e, &acts).map(|_| ()),
        };
        assert_eq!(got, Err(want), "{}", e.id);
        checked += 1;
    }
    println!("{checked} non-runnable kernels refused");
}

#[test]
fn dispatch_isa_errors() {
    assert_eq!(
        Dispatch::from_name("bogus").unwrap_err(),
        KernelError::UnknownIsa("bogus".into())
    );
    assert!(matches!(
        Dispatch::from_name("AVX2"),
        Err(KernelError::UnknownIsa(_))
    ));
    for isa in Isa::ALL {
        let compiled = KERNELS.iter().any(|e| e.isa == isa && e.compiled());
        let got = Dispatch::with_isa(isa);
        match (compiled, ternforge::cpu::supports(isa)) {
            (false, _) => assert_eq!(got.unwrap_err(), KernelError::IsaNotCompiled(isa)),
            (true, false) => assert_eq!(got.unwrap_err(), KernelError::IsaUnsupported(isa)),
            (true, true) => {
                let d = got.unwrap();
                assert!(d.overridden && d.isa == isa);
                assert_eq!(Dispatch::from_name(isa.name()).unwrap().isa, isa);
            }
        }
    }
    assert!(Dispatch::with_isa(Isa::Scalar).is_ok());
    #[cfg(target_arch = "x86_64")]
    {
        assert_eq!(
            Dispatch::with_isa(Isa::Neon).unwrap_err(),
            KernelError::IsaNotCompiled(Isa::Neon)
        );
        assert_eq!(
            Dispatch::with_isa(Isa::NeonDot).unwrap_err(),
            KernelError::IsaNotCompiled(Isa::NeonDot)
        );
    }
    #[cfg(target_arch = "aarch64")]
    assert_eq!(
        Dispatch::with_isa(Isa::Avx2).unwrap_err(),
        KernelError::IsaNotCompiled(Isa::Avx2)
    );
}

// ---------------------------------------------------------------------------------------------
// Child-process cases
// ---------------------------------------------------------------------------------------------

const CHILD: &str = "TERNFORGE_ERRORS_CHILD";

/// Run `test` of this binary in a child process with `env`; fail if the child fails or crashes.
fn run_child(test: &str, env: &[(&str, &str)]) {
    let exe = std::env::current_exe().expect("current test binary");
    // Under a cross runner (qemu-aarch64 via cargo's CARGO_TARGET_<TRIPLE>_RUNNER) the child
    // must go through the same runner: the host cannot exec the target binary directly.
    let runner = std::env::vars()
        .find(|(k, _)| k.starts_with("CARGO_TARGET_") && k.ends_with("_RUNNER"))
        .map(|(_, v)| v)
        .filter(|_| cfg!(not(target_arch = "x86_64")));
    let mut cmd = match runner.as_deref().map(str::split_whitespace) {
        Some(mut parts) => {
            let mut c = std::process::Command::new(parts.next().expect("runner program"));
            c.args(parts).arg(&exe);
            c
        }
        None => std::process::Command::new(&exe),
    };
    cmd.args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("spawn child test");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // the tail is enough: a crashing child's last line names what it was doing
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(30)..].join("\n");
    assert!(
        out.status.success(),
        "child `{test}` {env:?} failed ({}); output tail:\n{tail}",
        out.status
    );
    assert!(
        text.contains("1 passed"),
        "child `{test}` did not run:\n{text}"
    );
}

fn in_child() -> bool {
    std::env::var_os(CHILD).is_some()
}

/// Activations prepared by one kernel and given to another: an error, or (when the two
/// kernels share the activation layout) the correct result; never garbage or a crash.
#[test]
fn prepared_acts_from_another_kernel() {
    if !in_child() {
        return run_child("prepared_acts_from_another_kernel", &[]);
    }
    let x: Vec<f32> = (0..2 * K).map(|i| (i as f32 * 0.11).cos()).collect();
    let acts = quantize_acts(&x, 2, K).unwrap();
    let mut failures = Vec::new();
    for a in runnable(is_matmul) {
        let p = prepare_for(a, &acts).unwrap();
        for b in runnable(is_matmul) {
            let f = b.format;
            let data = random_tensor(f, 6, K, &mut common::Rng::new(6));
            let w = PackedWeights::new(f, &data, 6, K).unwrap();
            let want = ternforge::reference::matmul(f.spec(), &data, 6, K, &acts);
            let mut out = vec![f32::NAN; 2 * 6];
            eprintln!("prepared by {} -> run by {}", a.id, b.id);
            match matmul_prepared(b, &w, &p, &mut out) {
                Err(KernelError::Activations(_)) => {}
                Err(e) => failures.push(format!("{} acts -> {}: wrong error {e:?}", a.id, b.id)),
                Ok(()) if out == want => {}
                Ok(()) => failures.push(format!(
                    "{} acts -> {}: accepted and returned a wrong result",
                    a.id, b.id
                )),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatched pairs, e.g.:\n{}",
        failures.len(),
        failures[..failures.len().min(12)].join("\n")
    );
}

/// `TERNFORGE_ISA` names an unknown ISA: every dispatched call returns `UnknownIsa`.
#[test]
fn env_override_unknown_isa() {
    if !in_child() {
        return run_child("env_override_unknown_isa", &[("TERNFORGE_ISA", "bogus")]);
    }
    assert_eq!(
        ternforge::dispatch().unwrap_err(),
        KernelError::UnknownIsa("bogus".into())
    );
    assert_eq!(
        quantize(Format::I2S, &[0.5; 128], 1, 128).unwrap_err(),
        KernelError::UnknownIsa("bogus".into())
    );
    assert!(ternforge::select_matmul(Format::I2S, 1).is_err());
}

/// `TERNFORGE_ISA` names an ISA of another architecture: `IsaNotCompiled`.
#[test]
fn env_override_not_compiled() {
    let other = if cfg!(target_arch = "x86_64") {
        "neon"
    } else {
        "avx2"
    };
    if !in_child() {
        return run_child("env_override_not_compiled", &[("TERNFORGE_ISA", other)]);
    }
    let isa = Isa::from_name(other).unwrap();
    assert_eq!(
        ternforge::dispatch().unwrap_err(),
        KernelError::IsaNotCompiled(isa)
    );
    let data = random_tensor(Format::I2S, 1, 128, &mut common::Rng::new(7));
    let w = PackedWeights::new(Format::I2S, &data, 1, 128).unwrap();
    assert_eq!(
        ternforge::dequantize(&w, &mut [0f32; 128]).unwrap_err(),
        KernelError::IsaNotCompiled(isa)
    );
}

/// `TERNFORGE_ISA=scalar` is honoured: dispatch picks scalar kernels only.
#[test]
fn env_override_scalar() {
    if !in_child() {
        return run_child("env_override_scalar", &[("TERNFORGE_ISA", "scalar")]);
    }
    let d = ternforge::dispatch().unwrap();
    assert!(d.overridden && d.isa == Isa::Scalar);
    for f in Format::ALL {
        for m in [1, 4, 128] {
            assert_eq!(ternforge::select_matmul(f, m).unwrap().isa, Isa::Scalar);
        }
    }
}
