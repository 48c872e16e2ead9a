//! The parser on random and mutated input: it must return Ok or Err, never panic, and
//! whatever it accepts must be internally consistent. `fuzz/` runs the same entry point
//! under libFuzzer (nightly); this runs on stable.

use proptest::prelude::*;
use ternforge_engine::gguf::{
    Array, Gguf, GgufWriter, LutFormat, LutSizer, ParseOptions, TensorType, Value,
};

fn sizer(f: LutFormat, dims: &[u64]) -> Option<u64> {
    let row = *dims.first()?;
    let rows: u64 = dims[1..].iter().try_fold(1u64, |a, &d| a.checked_mul(d))?;
    match f {
        LutFormat::Tl1 if row % 2 == 0 => (row / 2).checked_mul(rows),
        LutFormat::Tl2 if row % 3 == 0 => (row / 3).checked_mul(rows),
        _ => None,
    }
}

/// Parses and, on success, checks the invariants a caller relies on.
fn exercise(bytes: &[u8]) {
    let s: &LutSizer = &sizer;
    for opts in [ParseOptions::default(), ParseOptions { lut_sizer: Some(s) }] {
        let Ok(g) = Gguf::parse_with(bytes, opts) else {
            continue;
        };
        assert!(g.data_offset() as usize <= bytes.len() || g.tensor_infos().is_empty());
        assert_eq!(g.data_offset() % g.alignment(), 0);
        for (k, v) in g.metadata().iter() {
            assert!(std::ptr::eq(g.get(k).unwrap(), v), "{k}");
        }
        for (info, view) in g.tensor_infos().iter().zip(g.tensors()) {
            assert_eq!(info.offset % g.alignment(), 0);
            assert_eq!(view.data.len() as u64, info.size);
            assert_eq!(
                g.tensor(&info.name).unwrap().data.as_ptr(),
                view.data.as_ptr()
            );
            if info.size_known {
                let expect = info.ty.byte_size(info.dims.as_slice(), Some(s)).unwrap();
                assert_eq!(expect, Some(info.size));
            }
            let _ = view.n_elements();
        }
    }
}

fn seed_file() -> Vec<u8> {
    let s: &LutSizer = &sizer;
    let mut w = GgufWriter::new().with_lut_sizer(s);
    w.add_kv("general.architecture", "bitnet-b1.58").unwrap();
    w.add_kv("general.alignment", Value::U32(32)).unwrap();
    w.add_kv("bitnet-b1.58.block_count", Value::U32(2)).unwrap();
    w.add_kv("f", Value::F32(1e-5)).unwrap();
    w.add_kv("b", Value::Bool(true)).unwrap();
    w.add_kv("i64", Value::I64(-5)).unwrap();
    w.add_kv("toks", Value::from(vec!["a", "bc", "Ġd"]))
        .unwrap();
    w.add_kv("types", Value::from(vec![1i32, 2, 3])).unwrap();
    w.add_kv("flags", Value::from(vec![true, false])).unwrap();
    w.add_kv(
        "nested",
        Value::from(vec![Array::from(vec![1u16]), Array::from(vec![2.0f64])]),
    )
    .unwrap();
    w.add_tensor(
        "token_embd.weight",
        &[256, 2],
        TensorType::F16,
        vec![3u8; 1024],
    )
    .unwrap();
    w.add_tensor("norm", &[8], TensorType::F32, vec![4u8; 32])
        .unwrap();
    w.add_tensor("i2s", &[128, 2], TensorType::I2_S, vec![5u8; 96])
        .unwrap();
    w.add_tensor("tq1", &[256], TensorType::TQ1_0, vec![6u8; 54])
        .unwrap();
    w.add_tensor("tq2", &[256], TensorType::TQ2_0, vec![7u8; 66])
        .unwrap();
    w.add_tensor("tl1", &[16, 2], TensorType::TL1, vec![8u8; 16])
        .unwrap();
    w.add_tensor("tl2", &[9], TensorType::TL2, vec![9u8; 3])
        .unwrap();
    w.to_bytes().unwrap()
}

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const INTERESTING: [u64; 12] = [
    0,
    1,
    2,
    4,
    5,
    31,
    32,
    0x7f,
    0xffff_ffff,
    1 << 32,
    i64::MAX as u64,
    u64::MAX,
];

fn mutate(rng: &mut Rng, buf: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        if buf.is_empty() {
            buf.push(rng.next() as u8);
        }
        let at = rng.below(buf.len());
        match rng.below(7) {
            0 => buf[at] ^= 1 << rng.below(8),
            1 => buf[at] = rng.next() as u8,
            2 => {
                let v = INTERESTING[rng.below(INTERESTING.len())];
                let width = [1usize, 2, 4, 8][rng.below(4)];
                let end = (at + width).min(buf.len());
                let bytes = v.to_le_bytes();
                buf[at..end].copy_from_slice(&bytes[..end - at]);
            }
            3 => buf.truncate(at),
            4 => {
                let n = 1 + rng.below(16);
                buf.splice(at..at, (0..n).map(|_| rng.next() as u8));
            }
            5 => {
                let end = (at + 1 + rng.below(16)).min(buf.len());
                buf.drain(at..end);
            }
            _ => {
                // Small additive change of a u64 field: counts, lengths, dims, offsets.
                let end = (at + 8).min(buf.len());
                let mut b = [0u8; 8];
                b[..end - at].copy_from_slice(&buf[at..end]);
                let v = u64::from_le_bytes(b)
                    .wrapping_add(rng.next() % 64)
                    .wrapping_sub(32);
                buf[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
            }
        }
    }
}

#[test]
fn gguf_seed_file_is_valid() {
    let bytes = seed_file();
    let s: &LutSizer = &sizer;
    let g = Gguf::parse_with(&bytes[..], ParseOptions { lut_sizer: Some(s) }).unwrap();
    assert_eq!(g.tensor_infos().len(), 7);
    exercise(&bytes);
}

#[test]
fn gguf_mutated_valid_files_never_panic() {
    let seed = seed_file();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut accepted = 0;
    for _ in 0..30_000 {
        let mut buf = seed.clone();
        mutate(&mut rng, &mut buf);
        exercise(&buf);
        accepted += usize::from(Gguf::parse(&buf[..]).is_ok());
    }
    // Mutations that only touch tensor data or padding leave the file valid, so some
    // accepted cases show the checks above actually ran.
    assert!(accepted > 1000, "{accepted}");
}

#[test]
fn gguf_every_single_byte_change_never_panics() {
    let seed = seed_file();
    let data_start = Gguf::parse(&seed[..]).unwrap().data_offset() as usize;
    let mut buf = seed.clone();
    for i in 0..data_start {
        for v in [0u8, 1, 0x20, 0x7f, 0x80, 0xff, seed[i] ^ 0x01] {
            buf[i] = v;
            exercise(&buf);
        }
        buf[i] = seed[i];
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn gguf_random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        exercise(&bytes);
    }

    #[test]
    fn gguf_random_bytes_after_valid_header_never_panic(
        version in prop::sample::select(vec![2u32, 3]),
        n_tensors in prop::sample::select(vec![0u64, 1, 2, 3, 1 << 40]),
        n_kv in prop::sample::select(vec![0u64, 1, 2, 3, u64::MAX]),
        rest in prop::collection::vec(any::<u8>(), 0..1024),
    ) {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&version.to_le_bytes());
        b.extend_from_slice(&n_tensors.to_le_bytes());
        b.extend_from_slice(&n_kv.to_le_bytes());
        b.extend_from_slice(&rest);
        exercise(&b);
    }

    #[test]
    fn gguf_written_files_read_back(
        kvs in prop::collection::vec(("[a-z.]{1,12}", any::<i64>(), any::<bool>()), 0..8),
        tensors in prop::collection::vec((1u64..40, 1u64..4), 0..6),
        align_pow in 0u32..8,
    ) {
        let mut w = GgufWriter::new();
        w.set_alignment(1 << align_pow).unwrap();
        let mut keys = std::collections::HashSet::new();
        for (k, v, as_str) in &kvs {
            if k == "general.alignment" || !keys.insert(k.clone()) {
                continue;
            }
            let value = if *as_str { Value::String(v.to_string()) } else { Value::I64(*v) };
            w.add_kv(k.clone(), value).unwrap();
        }
        let mut datas = Vec::new();
        for (i, (cols, rows)) in tensors.iter().enumerate() {
            let data: Vec<u8> = (0..cols * rows * 4).map(|j| (j as usize * 7 + i) as u8).collect();
            w.add_tensor(format!("t{i}"), &[*cols, *rows], TensorType::F32, data.clone()).unwrap();
            datas.push(data);
        }
        let bytes = w.to_bytes().unwrap();
        let g = Gguf::parse(&bytes[..]).unwrap();
        prop_assert_eq!(g.metadata(), w.metadata());
        for (i, d) in datas.iter().enumerate() {
            prop_assert_eq!(g.tensor(&format!("t{i}")).unwrap().data, &d[..]);
        }
        exercise(&bytes);
    }
}
