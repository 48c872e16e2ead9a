//! Criterion benches: one entry per runnable kernel of the table (ids from
//! `ternforge_macros::kernel_ids!`), per op: GEMV 2560x6912, GEMM m=128 on 2560x6912,
//! quantize / dequantize of 1M elements. Kernels this build or CPU cannot run print a skip line.
//! Sample counts are small so that `cargo bench` finishes in minutes. One weight copy is used,
//! so GEMV weights (a few MB) may sit in the last-level cache: these are compute-side numbers.
//! `ternforge bench` streams GEMV weights from DRAM and compares with the machine's measured
//! bandwidth and int8 peak.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;
use ternforge::{
    dequantize_with, matmul_prepared, prepare_for, quantize_acts, quantize_with, reference, Format,
    KernelEntry, PackedWeights, KERNELS,
};

const GEMV: &[&str] = ternforge_macros::kernel_ids!(gemv);
const GEMM: &[&str] = ternforge_macros::kernel_ids!(gemm);
const QUANTIZE: &[&str] = ternforge_macros::kernel_ids!(quantize);
const DEQUANTIZE: &[&str] = ternforge_macros::kernel_ids!(dequantize);

/// The runnable kernels among `ids`, printing a skip line for the others.
fn runnable(ids: &[&str]) -> Vec<&'static KernelEntry> {
    ids.iter()
        .filter_map(|id| {
            let e = KERNELS.iter().find(|e| e.id == *id)?;
            if e.runnable() {
                Some(e)
            } else {
                let why = if e.compiled() {
                    "CPU cannot run it"
                } else {
                    "not compiled"
                };
                println!("skipped: {id} ({why})");
                None
            }
        })
        .collect()
}

fn weights(n: usize, k: usize) -> Vec<f32> {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    (0..n * k)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 33) % 3) as f32 * 0.5 - 0.5
        })
        .collect()
}

fn packed(f: Format, n: usize, k: usize) -> Vec<u8> {
    reference::quantize(f.spec(), &weights(n, k), n, k)
}

fn matmul_group(c: &mut Criterion, name: &str, ids: &[&str], m: usize) {
    let (n, k) = (2560, 6912);
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(if m == 1 { 1 } else { 3 }));
    for e in runnable(ids) {
        let data = packed(e.format, n, k);
        let w = PackedWeights::new(e.format, &data, n, k).unwrap();
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i % 97) as f32 - 48.0) / 48.0)
            .collect();
        let acts = quantize_acts(&x, m, k).unwrap();
        let p = prepare_for(e, &acts).unwrap();
        let mut out = vec![0f32; m * n];
        if m == 1 {
            g.throughput(Throughput::Bytes(data.len() as u64));
        } else {
            g.throughput(Throughput::Elements((m * n * k) as u64));
        }
        g.bench_function(BenchmarkId::from_parameter(e.id), |b| {
            b.iter(|| matmul_prepared(e, &w, black_box(&p), &mut out).unwrap())
        });
    }
    g.finish();
}

fn gemv(c: &mut Criterion) {
    matmul_group(c, "gemv_2560x6912", GEMV, 1);
}

fn gemm(c: &mut Criterion) {
    matmul_group(c, "gemm_m128_2560x6912", GEMM, 128);
}

fn quantize(c: &mut Criterion) {
    let (n, k) = (1024, 1024);
    let w = weights(n, k);
    let mut g = c.benchmark_group("quantize_1M");
    g.sample_size(10)
        .throughput(Throughput::Elements((n * k) as u64));
    for e in runnable(QUANTIZE) {
        g.bench_function(BenchmarkId::from_parameter(e.id), |b| {
            b.iter(|| quantize_with(e, e.format, black_box(&w), n, k).unwrap())
        });
    }
    g.finish();
}

fn dequantize(c: &mut Criterion) {
    let (n, k) = (1024, 1024);
    let mut g = c.benchmark_group("dequantize_1M");
    g.sample_size(10)
        .throughput(Throughput::Elements((n * k) as u64));
    for e in runnable(DEQUANTIZE) {
        let data = packed(e.format, n, k);
        let w = PackedWeights::new(e.format, &data, n, k).unwrap();
        let mut out = vec![0f32; n * k];
        g.bench_function(BenchmarkId::from_parameter(e.id), |b| {
            b.iter(|| dequantize_with(e, black_box(&w), &mut out).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, gemv, gemm, quantize, dequantize);
criterion_main!(benches);
