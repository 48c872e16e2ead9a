//! `ternforge bench`: what this machine can do and how close the kernels get to it.
//!
//! * DRAM read bandwidth, one thread and all threads (stream-read a buffer far larger than the
//!   last-level cache, best of several passes, measured before and after the kernels: the
//!   higher figure is the reference);
//! * int8 dot-product peak of one core: `vpdpbusd` (AVX-512 VNNI) when the CPU has it, else
//!   `vpmaddubsw` (AVX2), as GMAC/s;
//! * per format and per runnable ISA: GEMV 2560x6912 and 6912x2560 (n x k) streaming the
//!   weights from DRAM (cycling over copies totalling more than the cache), one thread and all
//!   threads, as GB/s of weight bytes and % of the measured DRAM bandwidth, plus end to end
//!   (activation quantization and preparation included); GEMM m=128 on 2560x6912 as GMAC/s and
//!   % of the int8 peak; quantize / dequantize of 1M elements as Gelem/s (median call).

use super::Error;
use rayon::prelude::*;
use serde::Serialize;
use std::hint::black_box;
use std::time::{Duration, Instant};
use ternforge::{
    cpu, dequantize_with, matmul_prepared, matmul_with, prepare_for, quantize_acts, quantize_with,
    reference, Dispatch, Format, Isa, KernelEntry, KernelOp, PackedWeights, Tile,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Short run (smaller buffers, shorter timings; numbers are noisier).
    #[arg(long)]
    quick: bool,
    /// Only these formats (comma-separated, e.g. `i2s,tq2_0`).
    #[arg(long, value_delimiter = ',')]
    format: Vec<String>,
    /// Only these ISAs (comma-separated, e.g. `avx512vnni,scalar`).
    #[arg(long, value_delimiter = ',')]
    isa: Vec<String>,
    /// Threads of the pool ("all threads" in the results; default: all cores).
    #[arg(long, short)]
    threads: Option<usize>,
    #[command(flatten)]
    decode: super::bench_decode::DecodeArgs,
}

#[derive(Serialize, Clone)]
struct Machine {
    threads: usize,
    cpu_features: Vec<&'static str>,
    dram_read_gbs_1t: f64,
    dram_read_gbs_all: f64,
    int8_peak_gmacs_1t: f64,
    int8_peak_kind: &'static str,
}

#[derive(Serialize, Clone)]
struct Row {
    format: &'static str,
    isa: &'static str,
    kernel: &'static str,
    bench: String,
    threads: usize,
    value: f64,
    unit: &'static str,
    /// Percentage of the machine reference (`pct_of`), when one applies.
    pct: Option<f64>,
    pct_of: &'static str,
}

struct Budget {
    /// Time per measurement.
    time: Duration,
    /// Bytes of distinct weight copies the GEMV cycles over.
    weight_set: usize,
}

pub fn run(args: Args) -> Result<(), Error> {
    if let Some(t) = args.threads {
        if t == 0 {
            return Err("--threads must be at least 1".into());
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()?;
    }
    if args.decode.decode {
        return super::bench_decode::run(&args.decode, args.json, args.quick);
    }
    // "From DRAM" needs working sets well beyond the last-level cache (300 MiB on some
    // current Xeons); --quick keeps them small and its GEMV figures may be cache-assisted.
    let llc = llc_bytes();
    let budget = if args.quick {
        Budget {
            time: Duration::from_millis(250),
            weight_set: 96 << 20,
        }
    } else {
        Budget {
            time: Duration::from_millis(1000),
            weight_set: (288usize << 20).max(4 * llc),
        }
    };
    if !args.json && budget.weight_set < 2 * llc {
        eprintln!(
            "  note: the GEMV weight set ({} MiB) is not far above the last-level cache ({} MiB): GEMV figures may be cache-assisted",
            budget.weight_set >> 20,
            llc >> 20
        );
    }
    let formats: Vec<Format> = if args.format.is_empty() {
        Format::ALL.to_vec()
    } else {
        args.format
            .iter()
            .map(|s| Format::from_name(s).ok_or_else(|| format!("unknown format {s:?}")))
            .collect::<Result<_, _>>()?
    };
    let isas: Vec<Isa> = if args.isa.is_empty() {
        Isa::ALL.to_vec()
    } else {
        args.isa
            .iter()
            .map(|s| Isa::from_name(s).ok_or_else(|| format!("unknown ISA {s:?}")))
            .collect::<Result<_, _>>()?
    };
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let threads = rayon::current_num_threads();

    let progress = |s: &str| {
        if !args.json {
            eprintln!("  measuring {s}...");
        }
    };
    progress("DRAM read bandwidth");
    let (bw1, bwn) = dram_reference(&one, args.quick);
    progress("int8 peak");
    let (peak, peak_kind) = one.install(|| int8_peak(budget.time));
    let machine = Machine {
        threads,
        cpu_features: cpu::feature_names(),
        dram_read_gbs_1t: bw1,
        dram_read_gbs_all: bwn,
        int8_peak_gmacs_1t: peak,
        int8_peak_kind: peak_kind,
    };

    let mut rows = Vec::new();
    for &f in &formats {
        for &isa in &isas {
            let Ok(d) = Dispatch::with_isa(isa) else {
                continue;
            };
            // only kernels of exactly this ISA (dispatch would fall back to a lower one)
            let pick = |op: KernelOp, m: usize| d.select(f, op, m).ok().filter(|e| e.isa == isa);
            let mm = KernelOp::Matmul(Tile::new(1, 1));
            let (Some(gemv), Some(gemm)) = (pick(mm, 1), pick(mm, 128)) else {
                continue;
            };
            progress(&format!("{} {}", f.name(), isa.name()));
            let ctx = Ctx {
                f,
                isa,
                one: &one,
                budget: &budget,
                machine: &machine,
                threads,
            };
            for (n, k) in [(2560, 6912), (6912, 2560)] {
                ctx.gemv(gemv, n, k, &mut rows)?;
            }
            ctx.gemm(gemm, 2560, 6912, 128, &mut rows)?;
            if let Some(q) = pick(KernelOp::Quantize, 1) {
                ctx.quantize(q, &mut rows)?;
            }
            if let Some(dq) = pick(KernelOp::Dequantize, 1) {
                ctx.dequantize(dq, &mut rows)?;
            }
        }
    }

    // The references are measured again at the end and the higher figures kept (a machine
    // shared with neighbours varies over the run; the conservative reference is the best
    // one seen). Percentages already computed are rescaled to them.
    progress("DRAM read bandwidth and int8 peak again");
    let (bw1b, bwnb) = dram_reference(&one, args.quick);
    let (peak_b, _) = one.install(|| int8_peak(budget.time));
    let mut machine = machine;
    let (bw1, bwn, peak) = (bw1.max(bw1b), bwn.max(bwnb), peak.max(peak_b));
    for r in rows.iter_mut() {
        let was = match r.pct_of {
            "DRAM 1T" => machine.dram_read_gbs_1t / bw1,
            "DRAM all" => machine.dram_read_gbs_all / bwn,
            "int8 peak 1T" | "int8 peak all" => machine.int8_peak_gmacs_1t / peak,
            _ => 1.0,
        };
        r.pct = r.pct.map(|p| p * was);
    }
    machine.dram_read_gbs_1t = bw1;
    machine.dram_read_gbs_all = bwn;
    machine.int8_peak_gmacs_1t = peak;
    if args.json {
        let v = serde_json::json!({ "machine": machine, "results": rows });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "machine: {} threads, features: {}",
        machine.threads,
        machine.cpu_features.join(" ")
    );
    println!(
        "DRAM read: {:.1} GB/s (1 thread), {:.1} GB/s ({} threads)",
        bw1, bwn, threads
    );
    println!("int8 peak: {peak:.1} GMAC/s (1 thread, {peak_kind})");
    println!();
    let headers = [
        "format", "isa", "kernel", "bench", "threads", "value", "unit", "% of",
    ];
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            [
                r.format.to_string(),
                r.isa.to_string(),
                r.kernel.to_string(),
                r.bench.clone(),
                r.threads.to_string(),
                format!("{:.2}", r.value),
                r.unit.to_string(),
                r.pct
                    .map(|p| format!("{p:.0}% {}", r.pct_of))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    super::kernels::print_table(&headers, &cells);
    Ok(())
}

struct Ctx<'a> {
    f: Format,
    isa: Isa,
    one: &'a rayon::ThreadPool,
    budget: &'a Budget,
    machine: &'a Machine,
    threads: usize,
}

/// Deterministic ternary weights `{-1, 0, 1} * 0.5` (`n * k`).
fn weights(n: usize, k: usize) -> Vec<f32> {
    let mut s = 0x2545_f491_4f6c_dd1du64;
    (0..n * k)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 33) % 3) as f32 * 0.5 - 0.5
        })
        .collect()
}

fn activations(m: usize, k: usize) -> Vec<f32> {
    (0..m * k)
        .map(|i| ((i * 7919) % 1013) as f32 / 506.5 - 1.0)
        .collect()
}

/// Shortest time of one call of `f` over about `time` of repeated calls (best-of: the
/// machine reference must not be lowered by other processes sharing the cores).
fn best_call(time: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut best = f64::INFINITY;
    while start.elapsed() < time {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

/// Seconds per call of the fastest sweep: a sweep is `calls` consecutive calls of `f` (one
/// pass over a GEMV weight set larger than the caches); sweeps repeat for about `time`, at
/// least 3. The DRAM reference is a best-of too (best pass), so a kernel and its ceiling are
/// compared the same way on a machine whose neighbours take bandwidth now and then.
fn best_sweep(time: Duration, calls: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm up
    let start = Instant::now();
    let mut best = f64::INFINITY;
    let mut sweeps = 0;
    while sweeps < 3 || start.elapsed() < time {
        let t = Instant::now();
        for _ in 0..calls {
            f();
        }
        best = best.min(t.elapsed().as_secs_f64() / calls as f64);
        sweeps += 1;
    }
    best
}

/// Median seconds of one call of `f` over about `time` of repeated calls (short kernels on a
/// shared machine: the median ignores the calls a neighbour interrupted, unlike the mean,
/// without taking the luckiest call like the minimum).
fn median_call(time: Duration, mut f: impl FnMut()) -> f64 {
    f(); // warm up
    let start = Instant::now();
    let mut t: Vec<f64> = Vec::new();
    while t.len() < 5 || start.elapsed() < time {
        let c = Instant::now();
        f();
        t.push(c.elapsed().as_secs_f64());
    }
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// Run `f` repeatedly for about `time` (at least `min` calls); seconds per call.
fn time_per_call(time: Duration, min: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm up
    let start = Instant::now();
    let mut calls = 0;
    while calls < min || start.elapsed() < time {
        f();
        calls += 1;
    }
    start.elapsed().as_secs_f64() / calls as f64
}

impl Ctx<'_> {
    fn row(
        &self,
        e: &KernelEntry,
        bench: String,
        threads: usize,
        value: f64,
        unit: &'static str,
        pct: Option<(f64, &'static str)>,
    ) -> Row {
        Row {
            format: self.f.name(),
            isa: self.isa.name(),
            kernel: e.id,
            bench,
            threads,
            value,
            unit,
            pct: pct.map(|p| p.0),
            pct_of: pct.map(|p| p.1).unwrap_or(""),
        }
    }

    fn gemv(
        &self,
        e: &'static KernelEntry,
        n: usize,
        k: usize,
        rows: &mut Vec<Row>,
    ) -> Result<(), Error> {
        let f = self.f;
        let w = weights(n, k);
        let packed = reference::quantize(f.spec(), &w, n, k);
        drop(w);
        let bytes = packed.len();
        let copies = self.budget.weight_set.div_ceil(bytes).max(2);
        // cache-line aligned, as tensors of a 64-aligned GGUF file are (see AlignedBytes)
        let set: Vec<ternforge::AlignedBytes> = (0..copies)
            .map(|_| ternforge::AlignedBytes::copy_from(&packed))
            .collect();
        let views: Vec<PackedWeights> = set
            .iter()
            .map(|d| PackedWeights::new(f, d, n, k))
            .collect::<Result<_, _>>()?;
        let x = activations(1, k);
        let acts = quantize_acts(&x, 1, k)?;
        let prepared = prepare_for(e, &acts)?;
        let mut out = vec![0f32; n];
        let mut i = 0;
        let mut kernel_only = |out: &mut Vec<f32>| {
            matmul_prepared(e, &views[i % copies], &prepared, out).expect("gemv");
            i += 1;
        };
        let t1 = self
            .one
            .install(|| best_sweep(self.budget.time, copies, || kernel_only(&mut out)));
        let tn = best_sweep(self.budget.time, copies, || kernel_only(&mut out));
        let mut j = 0;
        let t_e2e = self.one.install(|| {
            best_sweep(self.budget.time, copies, || {
                let a = quantize_acts(black_box(&x), 1, k).expect("acts");
                matmul_with(e, &views[j % copies], &a, &mut out).expect("gemv");
                j += 1;
            })
        });
        let gbs = |t: f64| bytes as f64 / t / 1e9;
        let shape = format!("gemv {n}x{k}");
        let m = self.machine;
        rows.push(self.row(
            e,
            shape.clone(),
            1,
            gbs(t1),
            "GB/s",
            Some((100.0 * gbs(t1) / m.dram_read_gbs_1t, "DRAM 1T")),
        ));
        rows.push(self.row(
            e,
            format!("{shape} e2e"),
            1,
            gbs(t_e2e),
            "GB/s",
            Some((100.0 * gbs(t_e2e) / m.dram_read_gbs_1t, "DRAM 1T")),
        ));
        rows.push(self.row(
            e,
            shape,
            self.threads,
            gbs(tn),
            "GB/s",
            Some((100.0 * gbs(tn) / m.dram_read_gbs_all, "DRAM all")),
        ));
        Ok(())
    }

    fn gemm(
        &self,
        e: &'static KernelEntry,
        n: usize,
        k: usize,
        m: usize,
        rows: &mut Vec<Row>,
    ) -> Result<(), Error> {
        let f = self.f;
        let packed = reference::quantize(f.spec(), &weights(n, k), n, k);
        let w = PackedWeights::new(f, &packed, n, k)?;
        let acts = quantize_acts(&activations(m, k), m, k)?;
        let prepared = prepare_for(e, &acts)?;
        let mut out = vec![0f32; m * n];
        let mut run = || matmul_prepared(e, &w, &prepared, &mut out).expect("gemm");
        let t1 = self
            .one
            .install(|| time_per_call(self.budget.time, 1, &mut run));
        let tn = time_per_call(self.budget.time, 1, &mut run);
        let gmacs = |t: f64| (n * k * m) as f64 / t / 1e9;
        let peak = self.machine.int8_peak_gmacs_1t;
        let shape = format!("gemm m={m} {n}x{k}");
        rows.push(self.row(
            e,
            shape.clone(),
            1,
            gmacs(t1),
            "GMAC/s",
            Some((100.0 * gmacs(t1) / peak, "int8 peak 1T")),
        ));
        rows.push(self.row(
            e,
            shape,
            self.threads,
            gmacs(tn),
            "GMAC/s",
            Some((
                100.0 * gmacs(tn) / (peak * self.threads as f64),
                "int8 peak all",
            )),
        ));
        Ok(())
    }

    fn quantize(&self, e: &'static KernelEntry, rows: &mut Vec<Row>) -> Result<(), Error> {
        let (n, k) = (1024, 1024);
        let w = weights(n, k);
        let t = self.one.install(|| {
            median_call(self.budget.time, || {
                black_box(quantize_with(e, self.f, black_box(&w), n, k).expect("quantize"));
            })
        });
        rows.push(self.row(
            e,
            "quantize 1M".into(),
            1,
            (n * k) as f64 / t / 1e9,
            "Gelem/s",
            None,
        ));
        Ok(())
    }

    fn dequantize(&self, e: &'static KernelEntry, rows: &mut Vec<Row>) -> Result<(), Error> {
        let (n, k) = (1024, 1024);
        let packed = reference::quantize(self.f.spec(), &weights(n, k), n, k);
        let w = PackedWeights::new(self.f, &packed, n, k)?;
        let mut out = vec![0f32; n * k];
        let t = self.one.install(|| {
            median_call(self.budget.time, || {
                dequantize_with(e, &w, &mut out).expect("dequantize");
                black_box(&out);
            })
        });
        rows.push(self.row(
            e,
            "dequantize 1M".into(),
            1,
            (n * k) as f64 / t / 1e9,
            "Gelem/s",
            None,
        ));
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Machine references
// ---------------------------------------------------------------------------------------------

/// Size of the largest CPU cache in bytes (Linux sysfs; 0 when unknown).
fn llc_bytes() -> usize {
    let mut best = 0;
    for i in 0..8 {
        let p = format!("/sys/devices/system/cpu/cpu0/cache/index{i}/size");
        let Ok(t) = std::fs::read_to_string(p) else {
            continue;
        };
        let t = t.trim();
        let (num, mul) = match t.chars().last() {
            Some('K') => (&t[..t.len() - 1], 1usize << 10),
            Some('M') => (&t[..t.len() - 1], 1 << 20),
            Some('G') => (&t[..t.len() - 1], 1 << 30),
            _ => (t, 1),
        };
        if let Ok(v) = num.parse::<usize>() {
            best = best.max(v.saturating_mul(mul));
        }
    }
    best
}

/// How the reference reads a buffer: `streams` equal parts read interleaved, a line of
/// each per step (the LM head and the LUT tiles read several rows at once, and several
/// streams read faster than one on some machines), touching the line `pf` bytes ahead in
/// each with a software prefetch (`pf == 0`: hardware prefetch only) into L1, or into L2
/// when `l2` (the hint the tensor-scale GEMV kernels use).
#[derive(Clone, Copy)]
struct Reader {
    streams: usize,
    pf: usize,
    l2: bool,
}

/// Sum a slice of u64 (see [`Reader`]); the loads dominate.
fn read_sum(s: &[u64], r: Reader) -> u64 {
    match r.streams {
        1 => read_streams::<1>(s, r),
        4 => read_streams::<4>(s, r),
        n => unreachable!("the reference reads 1 or 4 streams, not {n}"),
    }
}

/// [`read_sum`] over `S` streams: per stream and line, 8 words added pairwise into 4 lanes
/// (the accumulators of four streams stay in registers; a loop over a run-time stream count
/// spilled them every line and read slower than DRAM on one thread).
fn read_streams<const S: usize>(s: &[u64], r: Reader) -> u64 {
    let part = s.len() / S / 8 * 8;
    let parts: [&[u64]; S] = core::array::from_fn(|j| &s[j * part..(j + 1) * part]);
    let mut acc = [[0u64; 4]; S];
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (r.pf, r.l2); // hardware prefetch only
    for i in (0..part).step_by(8) {
        for (a, p) in acc.iter_mut().zip(parts) {
            let c: &[u64; 8] = p[i..i + 8].try_into().expect("8 words");
            #[cfg(target_arch = "x86_64")]
            if r.pf != 0 {
                // SAFETY: SSE is part of the x86-64 baseline; a prefetch never faults,
                // whatever the address (wrapping_add: no pointer arithmetic past the
                // allocation is used).
                unsafe {
                    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0, _MM_HINT_T1};
                    let q = (c.as_ptr() as *const i8).wrapping_add(r.pf);
                    if r.l2 {
                        _mm_prefetch::<_MM_HINT_T1>(q);
                    } else {
                        _mm_prefetch::<_MM_HINT_T0>(q);
                    }
                }
            }
            for l in 0..4 {
                a[l] = a[l].wrapping_add(c[l].wrapping_add(c[l + 4]));
            }
        }
    }
    acc.iter()
        .flatten()
        .chain(&s[S * part..])
        .fold(0u64, |a, &v| a.wrapping_add(v))
}

/// The DRAM read reference of both benches (GB/s: one thread, all threads): a buffer of
/// max(1 GiB, 8 x the last-level cache), best of 5 passes (`quick`: 256 MiB, 3 passes).
pub(super) fn dram_reference(one: &rayon::ThreadPool, quick: bool) -> (f64, f64) {
    if quick {
        dram_bandwidth(one, 256 << 20, 3)
    } else {
        dram_bandwidth(one, (1usize << 30).max(8 * llc_bytes()), 5)
    }
}

/// Best-of-`passes` read bandwidth in GB/s over a `bytes` buffer: one thread, all threads.
/// Each pass is the best of a plain streaming sum, sums with software prefetch at a few
/// distances and four-stream sums (the kernels prefetch and the LM head reads four rows at
/// once, so the reference must not be a weaker reader than any of them).
fn dram_bandwidth(one: &rayon::ThreadPool, bytes: usize, passes: usize) -> (f64, f64) {
    let words = bytes / 8;
    // written (not calloc'ed zero pages) so every page is really backed by DRAM
    let buf: Vec<u64> = (0..words as u64).collect();
    // one stream: the plain sum, near L1 prefetches, and the far L2 prefetches of the GEMV
    // kernels (64 KiB and more ahead); four streams: without and with the LM head's prefetch
    let one_stream = |pf, l2| Reader { streams: 1, pf, l2 };
    let four = |pf| Reader {
        streams: 4,
        pf,
        l2: false,
    };
    let distances: Vec<Reader> = if cfg!(target_arch = "x86_64") {
        vec![
            one_stream(0, false),
            one_stream(4 << 10, false),
            one_stream(16 << 10, false),
            one_stream(64 << 10, false),
            one_stream(64 << 10, true),
            one_stream(256 << 10, true),
            four(0),
            four(16 << 10),
        ]
    } else {
        vec![one_stream(0, false), four(0)]
    };
    let best = |f: &dyn Fn(Reader) -> u64| {
        (0..passes)
            .flat_map(|_| distances.iter())
            .map(|&pf| {
                let t = Instant::now();
                black_box(f(pf));
                bytes as f64 / t.elapsed().as_secs_f64() / 1e9
            })
            .fold(0f64, f64::max)
    };
    let single = one.install(|| best(&|pf| read_sum(black_box(&buf), pf)));
    let chunk = words
        .div_ceil(rayon::current_num_threads() * 4)
        .max(1 << 16);
    let all = best(&|pf| {
        black_box(&buf)
            .par_chunks(chunk)
            .map(|c| read_sum(c, pf))
            .reduce(|| 0, u64::wrapping_add)
    });
    (single, all)
}

/// One core's int8 multiply-accumulate peak (GMAC/s) and the instruction measured.
fn int8_peak(time: Duration) -> (f64, &'static str) {
    #[cfg(target_arch = "x86_64")]
    {
        if cpu::supports(Isa::Avx512Vnni) {
            let per = best_call(time, || {
                // SAFETY: the CPU supports AVX-512 F/BW/VNNI (checked just above).
                black_box(unsafe { x86::vnni_loop(black_box(1 << 16)) });
            });
            return (
                (1u64 << 16) as f64 * x86::VNNI_MACS as f64 / per / 1e9,
                "vpdpbusd zmm",
            );
        }
        if cpu::supports(Isa::Avx2) {
            let per = best_call(time, || {
                // SAFETY: the CPU supports AVX2 (checked just above).
                black_box(unsafe { x86::maddubs_loop(black_box(1 << 16)) });
            });
            return (
                (1u64 << 16) as f64 * x86::MADDUBS_MACS as f64 / per / 1e9,
                "vpmaddubsw ymm",
            );
        }
    }
    // portable fallback: a scalar i8 dot product
    let a: Vec<i8> = (0..4096).map(|i| (i % 251) as i8).collect();
    let b: Vec<i8> = (0..4096).map(|i| (i % 241) as i8).collect();
    let per = time_per_call(time, 3, || {
        let s: i32 = black_box(&a)
            .iter()
            .zip(black_box(&b))
            .map(|(&x, &y)| x as i32 * y as i32)
            .sum();
        black_box(s);
    });
    (4096.0 / per / 1e9, "scalar i8")
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Independent accumulators: enough to cover the latency of `vpdpbusd` on 2 ports.
    const ACC: usize = 16;
    /// MACs per loop iteration: ACC instructions of 64 u8*i8 products each.
    pub const VNNI_MACS: usize = ACC * 64;
    /// MACs per loop iteration of the AVX2 loop: ACC `vpmaddubsw` of 32 products each.
    pub const MADDUBS_MACS: usize = ACC * 32;

    /// `iters` iterations of ACC independent `vpdpbusd zmm` (returns a value so that nothing
    /// is optimised away).
    #[target_feature(enable = "avx512vnni,avx512f,avx512bw")]
    pub unsafe fn vnni_loop(iters: usize) -> i32 {
        let a = _mm512_set1_epi8(3);
        let b = _mm512_set1_epi8(-2);
        let mut acc = [_mm512_setzero_si512(); ACC];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm512_dpbusd_epi32(*v, a, b);
            }
        }
        let mut s = _mm512_setzero_si512();
        for v in acc {
            s = _mm512_add_epi32(s, v);
        }
        _mm512_reduce_add_epi32(s)
    }

    /// `iters` iterations of ACC independent `vpmaddubsw ymm` + `vpaddw` chains.
    #[target_feature(enable = "avx2")]
    pub unsafe fn maddubs_loop(iters: usize) -> i32 {
        let a = _mm256_set1_epi8(3);
        let b = _mm256_set1_epi8(-2);
        let mut acc = [_mm256_setzero_si256(); ACC];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm256_add_epi16(*v, _mm256_maddubs_epi16(a, b));
            }
        }
        let mut s = _mm256_setzero_si256();
        for v in acc {
            s = _mm256_add_epi16(s, v);
        }
        _mm256_extract_epi16::<0>(s)
    }
}
