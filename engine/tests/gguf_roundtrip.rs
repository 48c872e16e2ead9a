//! Writer -> reader round trips, byte-exact, plus getters and the atomic file write.

use std::borrow::Cow;

use ternforge_engine::gguf::{
    Array, GgmlType, Gguf, GgufError, GgufWriter, LutFormat, LutSizer, ParseOptions, TensorType,
    Value, GGUF_VERSION,
};

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A made-up TL sizing rule standing in for the kernel crate's: 2 bits per element for TL1,
/// 5 bits per 3 elements (rounded up per row) for TL2, rows a multiple of 4.
fn test_sizer(f: LutFormat, dims: &[u64]) -> Option<u64> {
    let row = *dims.first()?;
    if row % 4 != 0 {
        return None;
    }
    let rows: u64 = dims[1..].iter().product();
    let per_row = match f {
        LutFormat::Tl1 => row / 4,
        LutFormat::Tl2 => (row / 3 * 5).div_ceil(8) + 1,
    };
    Some(per_row * rows)
}

fn all_values() -> Vec<(&'static str, Value)> {
    vec![
        ("general.architecture", Value::from("bitnet-b1.58")),
        ("t.u8", Value::U8(200)),
        ("t.i8", Value::I8(-100)),
        ("t.u16", Value::U16(60000)),
        ("t.i16", Value::I16(-30000)),
        ("t.u32", Value::U32(4_000_000_000)),
        ("t.i32", Value::I32(-2_000_000_000)),
        ("t.f32", Value::F32(1e-5)),
        ("t.bool", Value::Bool(true)),
        ("t.string", Value::from("héllo ✓ — Ġ")),
        ("t.empty_string", Value::from("")),
        ("t.u64", Value::U64(u64::MAX)),
        ("t.i64", Value::I64(i64::MIN)),
        ("t.f64", Value::F64(std::f64::consts::PI)),
        ("a.u8", Value::from(vec![0u8, 1, 255])),
        ("a.i8", Value::from(vec![-128i8, 127])),
        ("a.u16", Value::from(vec![1u16, 65535])),
        ("a.i16", Value::from(vec![-1i16])),
        ("a.u32", Value::from(vec![7u32; 5])),
        ("a.i32", Value::from(vec![1i32, -2, 3])),
        ("a.f32", Value::from(vec![0.5f32, -0.0, f32::INFINITY])),
        ("a.bool", Value::from(vec![true, false, true])),
        ("a.string", Value::from(vec!["a", "", "Ġhello", "日本"])),
        ("a.u64", Value::from(vec![u64::MAX, 0])),
        ("a.i64", Value::from(vec![i64::MIN, 5])),
        ("a.f64", Value::from(vec![1.5f64])),
        ("a.empty", Value::from(Vec::<i32>::new())),
        (
            "a.nested",
            Value::from(vec![
                Array::from(vec![1i32, 2]),
                Array::from(vec!["x".to_owned()]),
                Array::Array(vec![
                    Array::from(vec![3.0f32]),
                    Array::from(Vec::<u8>::new()),
                ]),
            ]),
        ),
    ]
}

struct T {
    name: &'static str,
    dims: Vec<u64>,
    ty: TensorType,
    data: Vec<u8>,
}

fn all_tensors() -> Vec<T> {
    let t = |name, dims: Vec<u64>, ty: TensorType, bytes: usize, seed| T {
        name,
        dims,
        ty,
        data: pattern(bytes, seed),
    };
    vec![
        t(
            "token_embd.weight",
            vec![256, 3],
            TensorType::F16,
            256 * 3 * 2,
            1,
        ),
        t("output_norm.weight", vec![256], TensorType::F32, 1024, 2),
        t(
            "blk.0.attn_q.weight",
            vec![256, 2],
            TensorType::I2_S,
            512 / 4 + 32,
            3,
        ),
        t(
            "blk.0.ffn_up.weight",
            vec![512, 2],
            TensorType::TQ2_0,
            4 * 66,
            4,
        ),
        t(
            "blk.0.ffn_down.weight",
            vec![256, 3],
            TensorType::TQ1_0,
            3 * 54,
            5,
        ),
        t("q8", vec![64, 1, 1, 2], GgmlType::Q8_0.into(), 4 * 34, 6),
        t("bf16", vec![3], GgmlType::BF16.into(), 6, 7),
        t("scalar", vec![], TensorType::F32, 4, 8),
        t("empty", vec![0, 5], TensorType::F32, 0, 9),
        t("tl1", vec![64, 3], TensorType::TL1, 16 * 3, 10),
        t(
            "tl2",
            vec![96, 2],
            TensorType::TL2,
            2 * ((96 / 3 * 5usize).div_ceil(8) + 1),
            11,
        ),
        t("i32", vec![3], GgmlType::I32.into(), 12, 12),
    ]
}

fn build(alignment: Option<u64>) -> (Vec<u8>, Vec<T>) {
    let sizer: &LutSizer = &test_sizer;
    let mut w = GgufWriter::new().with_lut_sizer(sizer);
    if let Some(a) = alignment {
        w.set_alignment(a).unwrap();
    }
    for (k, v) in all_values() {
        w.add_kv(k, v).unwrap();
    }
    let tensors = all_tensors();
    for t in &tensors {
        w.add_tensor(t.name, &t.dims, t.ty, t.data.as_slice())
            .unwrap();
    }
    (w.to_bytes().unwrap(), tensors)
}

fn check_file(bytes: &[u8], tensors: &[T], alignment: u64) {
    let sizer: &LutSizer = &test_sizer;
    let g = Gguf::parse_with(
        bytes,
        ParseOptions {
            lut_sizer: Some(sizer),
        },
    )
    .unwrap();
    assert_eq!(g.version(), GGUF_VERSION);
    assert_eq!(g.alignment(), alignment);
    assert_eq!(g.data_offset() % alignment, 0);
    for (k, v) in all_values() {
        assert_eq!(g.get(k), Some(&v), "key {k}");
    }
    let extra = usize::from(alignment != 32);
    assert_eq!(g.metadata().len(), all_values().len() + extra);
    assert_eq!(g.tensor_infos().len(), tensors.len());
    for (t, info) in tensors.iter().zip(g.tensor_infos()) {
        assert_eq!(info.name, t.name);
        assert_eq!(info.offset % alignment, 0, "{}", t.name);
        let v = g.tensor(t.name).unwrap();
        assert_eq!(v.name, t.name);
        assert_eq!(v.dims, &t.dims[..]);
        assert_eq!(v.ty, t.ty);
        assert!(v.size_known);
        assert_eq!(v.data, &t.data[..], "{}", t.name);
    }
    assert!(g.tensor("missing").is_none());
}

#[test]
fn gguf_round_trip_all_value_and_tensor_types() {
    let (bytes, tensors) = build(None);
    check_file(&bytes, &tensors, 32);
    // Deterministic output.
    assert_eq!(build(None).0, bytes);
}

#[test]
fn gguf_round_trip_other_alignments() {
    for a in [1u64, 8, 64, 4096] {
        let (bytes, tensors) = build(Some(a));
        check_file(&bytes, &tensors, a);
        let g = Gguf::parse(&bytes[..]).unwrap();
        assert_eq!(g.get_u32("general.alignment").unwrap() as u64, a);
    }
}

#[test]
fn gguf_rewrite_is_byte_identical() {
    let (bytes, _) = build(Some(64));
    let sizer: &LutSizer = &test_sizer;
    let g = Gguf::parse_with(
        &bytes[..],
        ParseOptions {
            lut_sizer: Some(sizer),
        },
    )
    .unwrap();
    let mut w = GgufWriter::new().with_lut_sizer(sizer);
    for (k, v) in g.metadata().iter() {
        w.add_kv(k, v.clone()).unwrap();
    }
    for t in g.tensors() {
        w.add_tensor(t.name, t.dims, t.ty, Cow::Borrowed(t.data))
            .unwrap();
    }
    assert_eq!(w.to_bytes().unwrap(), bytes);
}

#[test]
fn gguf_layout_is_padded_as_specified() {
    let mut w = GgufWriter::new();
    w.add_kv("k", Value::U8(1)).unwrap();
    w.add_tensor("a", &[3], TensorType::F32, vec![1u8; 12])
        .unwrap();
    w.add_tensor("b", &[1], TensorType::F32, vec![2u8; 4])
        .unwrap();
    let bytes = w.to_bytes().unwrap();
    // header 24, kv: 8+1 key, 4 type, 1 value = 14 -> 38; infos: a: 8+1+4+8+4+8 = 33,
    // b: 33 -> 104, padded to 128; a at 128..140, pad to 160, b at 160..164, pad to 192.
    assert_eq!(bytes.len(), 192);
    assert_eq!(&bytes[..4], b"GGUF");
    assert_eq!(&bytes[128..140], &[1u8; 12]);
    assert!(bytes[140..160].iter().all(|&b| b == 0));
    assert_eq!(&bytes[160..164], &[2u8; 4]);
    let g = Gguf::parse(&bytes[..]).unwrap();
    assert_eq!(g.data_offset(), 128);
    assert_eq!(g.tensor_infos()[1].offset, 32);
}

#[test]
fn gguf_lut_tensor_without_sizer_spans_to_next_tensor() {
    let (bytes, _) = build(None);
    let g = Gguf::parse(&bytes[..]).unwrap();
    let tl1 = g.tensor("tl1").unwrap();
    assert!(!tl1.size_known);
    // 48 bytes of data, padded to 64 before "tl2".
    assert_eq!(tl1.data.len(), 64);
    assert_eq!(&tl1.data[..48], &pattern(48, 10)[..]);
    assert!(tl1.data[48..].iter().all(|&b| b == 0));
    assert!(g.tensor("q8").unwrap().size_known);
}

#[test]
fn gguf_getters_convert_and_report() {
    let mut w = GgufWriter::new();
    w.add_kv("u8", Value::U8(7)).unwrap();
    w.add_kv("i64", Value::I64(-1)).unwrap();
    w.add_kv("big", Value::U64(1 << 40)).unwrap();
    w.add_kv("f64", Value::F64(0.25)).unwrap();
    w.add_kv("int_as_float", Value::I32(-3)).unwrap();
    w.add_kv("s", Value::from("x")).unwrap();
    w.add_kv("b", Value::Bool(false)).unwrap();
    w.add_kv("toks", Value::from(vec!["a", "b"])).unwrap();
    w.add_kv("types", Value::from(vec![1i32, 6])).unwrap();
    w.add_kv("scores", Value::from(vec![-1.5f32])).unwrap();
    let bytes = w.to_bytes().unwrap();
    let g = Gguf::parse(bytes).unwrap();
    assert_eq!(g.get_u32("u8").unwrap(), 7);
    assert_eq!(g.get_u64("u8").unwrap(), 7);
    assert_eq!(g.get_u64("big").unwrap(), 1 << 40);
    assert_eq!(g.metadata().get_i64("i64").unwrap(), -1);
    assert_eq!(g.get_f32("f64").unwrap(), 0.25);
    assert_eq!(g.get_f32("int_as_float").unwrap(), -3.0);
    assert_eq!(g.get_f32("u8").unwrap(), 7.0);
    assert_eq!(g.get_str("s").unwrap(), "x");
    assert!(!g.get_bool("b").unwrap());
    assert_eq!(g.get_str_array("toks").unwrap(), ["a", "b"]);
    assert_eq!(g.get_i32_array("types").unwrap(), [1, 6]);
    assert_eq!(g.get_f32_array("scores").unwrap(), [-1.5]);

    match g.get_u32("big") {
        Err(GgufError::OutOfRange { key, target, .. }) => {
            assert_eq!(key, "big");
            assert_eq!(target, "u32");
        }
        r => panic!("{r:?}"),
    }
    assert!(matches!(
        g.get_u32("i64"),
        Err(GgufError::OutOfRange { .. })
    ));
    assert!(matches!(
        g.get_f32("big"),
        Err(GgufError::OutOfRange { .. })
    ));
    match g.get_str("u8") {
        Err(GgufError::WrongType {
            key,
            expected,
            found,
        }) => {
            assert_eq!(
                (key.as_str(), expected, found.as_str()),
                ("u8", "string", "u8")
            );
        }
        r => panic!("{r:?}"),
    }
    match g.get_i32_array("scores") {
        Err(GgufError::WrongType { found, .. }) => assert_eq!(found, "array of f32"),
        r => panic!("{r:?}"),
    }
    assert!(matches!(g.get_u32("s"), Err(GgufError::WrongType { .. })));
    assert!(matches!(g.get_f32("s"), Err(GgufError::WrongType { .. })));
    match g.get_u32("nope") {
        Err(GgufError::KeyNotFound { key }) => assert_eq!(key, "nope"),
        r => panic!("{r:?}"),
    }
    let msg = g.get_str("nope").unwrap_err().to_string();
    assert!(msg.contains("nope"), "{msg}");
}

#[test]
fn gguf_writer_rejects_bad_input() {
    let mut w = GgufWriter::new();
    w.add_kv("k", Value::U8(1)).unwrap();
    assert!(matches!(
        w.add_kv("k", Value::U8(2)),
        Err(GgufError::DuplicateKey { key }) if key == "k"
    ));
    assert!(matches!(
        w.add_kv("", Value::U8(2)),
        Err(GgufError::EmptyKey)
    ));
    assert!(matches!(
        w.add_kv("general.alignment", Value::U32(24)),
        Err(GgufError::BadAlignment { value: 24 })
    ));
    assert!(matches!(
        w.add_kv("general.alignment", Value::from("32")),
        Err(GgufError::WrongType { .. })
    ));
    assert!(matches!(
        w.set_alignment(0),
        Err(GgufError::BadAlignment { value: 0 })
    ));
    let mut deep = Array::from(vec![1u8]);
    for _ in 0..16 {
        deep = Array::Array(vec![deep]);
    }
    assert!(matches!(
        w.add_kv("deep", Value::Array(deep)),
        Err(GgufError::ArrayTooDeep { key, .. }) if key == "deep"
    ));

    w.add_tensor("t", &[4], TensorType::F32, vec![0u8; 16])
        .unwrap();
    assert!(matches!(
        w.add_tensor("t", &[4], TensorType::F32, vec![0u8; 16]),
        Err(GgufError::DuplicateTensor { name }) if name == "t"
    ));
    match w.add_tensor("short", &[4], TensorType::F32, vec![0u8; 15]) {
        Err(GgufError::WrongTensorSize {
            tensor,
            expected,
            got,
        }) => assert_eq!((tensor.as_str(), expected, got), ("short", 16, 15)),
        r => panic!("{r:?}"),
    }
    assert!(matches!(
        w.add_tensor("i2s", &[64, 2], TensorType::I2_S, vec![0u8; 64]),
        Err(GgufError::BadShape { tensor, .. }) if tensor == "i2s"
    ));
    assert!(matches!(
        w.add_tensor("five", &[1, 1, 1, 1, 1], TensorType::F32, vec![0u8; 4]),
        Err(GgufError::TooManyDims { n_dims: 5, .. })
    ));
    assert!(matches!(
        w.add_tensor("", &[1], TensorType::F32, vec![0u8; 4]),
        Err(GgufError::EmptyTensorName)
    ));
    // Failed additions leave nothing behind.
    let g = Gguf::parse(w.to_bytes().unwrap()).unwrap();
    assert_eq!(g.tensor_infos().len(), 1);
    assert_eq!(g.metadata().len(), 1);

    let sizer: &LutSizer = &test_sizer;
    let mut w = GgufWriter::new().with_lut_sizer(sizer);
    assert!(matches!(
        w.add_tensor("tl1", &[6, 1], TensorType::TL1, vec![0u8; 2]),
        Err(GgufError::BadShape { .. })
    ));
    assert!(matches!(
        w.add_tensor("tl1", &[8, 1], TensorType::TL1, vec![0u8; 3]),
        Err(GgufError::WrongTensorSize { expected: 2, .. })
    ));
}

#[test]
fn gguf_write_to_path_is_atomic_and_mmap_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, b"old contents").unwrap();
    let (bytes, tensors) = build(None);

    let sizer: &LutSizer = &test_sizer;
    let mut w = GgufWriter::new().with_lut_sizer(sizer);
    for (k, v) in all_values() {
        w.add_kv(k, v).unwrap();
    }
    for t in &tensors {
        w.add_tensor(t.name, &t.dims, t.ty, t.data.clone()).unwrap();
    }
    w.write_to_path(&path).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["model.gguf"], "no temp file left behind");

    let g = Gguf::open_with(
        &path,
        ParseOptions {
            lut_sizer: Some(sizer),
        },
    )
    .unwrap();
    assert_eq!(g.bytes(), &bytes[..]);
    assert_eq!(
        g.tensor("blk.0.ffn_up.weight").unwrap().data,
        &pattern(4 * 66, 4)[..]
    );

    // A directory that does not exist: error naming the path, nothing created.
    let bad = dir.path().join("no_such_dir").join("x.gguf");
    match w.write_to_path(&bad) {
        Err(GgufError::Io { path, .. }) => {
            assert!(path.starts_with(dir.path().join("no_such_dir")))
        }
        r => panic!("{r:?}"),
    }
    // Opening a missing or empty file is a typed error.
    assert!(matches!(
        Gguf::open(dir.path().join("missing.gguf")),
        Err(GgufError::Io { .. })
    ));
    let empty = dir.path().join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(
        Gguf::open(&empty),
        Err(GgufError::Truncated { .. })
    ));
}

#[test]
fn gguf_type_table() {
    let ids = [
        (GgmlType::F32, 0, 1, 4),
        (GgmlType::F16, 1, 1, 2),
        (GgmlType::Q8_0, 8, 32, 34),
        (GgmlType::I8, 24, 1, 1),
        (GgmlType::F64, 28, 1, 8),
        (GgmlType::BF16, 30, 1, 2),
        (GgmlType::TQ1_0, 34, 256, 54),
        (GgmlType::TQ2_0, 35, 256, 66),
        (GgmlType::I2_S, 36, 128, 32),
    ];
    for (t, id, block, bytes) in ids {
        assert_eq!(t.id(), id);
        assert_eq!(GgmlType::from_id(id), Some(t));
        assert_eq!(t.block_layout(), (block, bytes));
    }
    for t in GgmlType::ALL {
        assert_eq!(GgmlType::from_id(t.id()), Some(t));
        assert_eq!(TensorType::from_id(t.id()), Some(TensorType::Known(t)));
    }
    assert_eq!(TensorType::from_id(38), Some(TensorType::TL1));
    assert_eq!(TensorType::from_id(39), Some(TensorType::TL2));
    assert_eq!(TensorType::TL2.id(), 39);
    for id in [4, 5, 31, 32, 33, 37, 40, u32::MAX] {
        assert_eq!(TensorType::from_id(id), None, "{id}");
    }
    // I2_S: n/4 + 32; official 2B4T q_proj is 2560 x 2560.
    assert_eq!(
        GgmlType::I2_S.byte_size(&[2560, 2560]).unwrap(),
        2560 * 2560 / 4 + 32
    );
    assert_eq!(
        GgmlType::TQ1_0.byte_size(&[2560, 6912]).unwrap(),
        6912 * 10 * 54
    );
    assert_eq!(
        GgmlType::F16.byte_size(&[2560, 128256]).unwrap(),
        2560 * 128256 * 2
    );
    assert!(TensorType::TL1
        .byte_size(&[128, 4], None)
        .unwrap()
        .is_none());
}

/// The shape of the official BitNet b1.58 files (architecture `bitnet-b1.58`, older
/// `bitnet-25`): I2_S projections with the f32 scale in the 32-byte tail, F16 token_embd.
#[test]
fn gguf_official_style_bitnet_file() {
    for arch in ["bitnet-b1.58", "bitnet-25"] {
        let mut w = GgufWriter::new();
        w.add_kv("general.architecture", arch).unwrap();
        w.add_kv(format!("{arch}.block_count"), Value::U32(1))
            .unwrap();
        w.add_kv(format!("{arch}.embedding_length"), Value::U32(256))
            .unwrap();
        w.add_kv(format!("{arch}.rope.freq_base"), Value::F32(500000.0))
            .unwrap();
        w.add_kv("tokenizer.ggml.bos_token_id", Value::U32(128000))
            .unwrap();
        let embd = vec![0x3cu8; 256 * 8 * 2];
        w.add_tensor("token_embd.weight", &[256, 8], TensorType::F16, embd)
            .unwrap();
        let mut q = pattern(256 * 256 / 4, 1);
        let mut tail = 0.75f32.to_le_bytes().to_vec();
        tail.resize(32, 0);
        q.extend_from_slice(&tail);
        w.add_tensor("blk.0.attn_q.weight", &[256, 256], TensorType::I2_S, q)
            .unwrap();
        let g = Gguf::parse(w.to_bytes().unwrap()).unwrap();
        assert_eq!(g.get_str("general.architecture").unwrap(), arch);
        assert_eq!(g.get_u32(&format!("{arch}.block_count")).unwrap(), 1);
        assert_eq!(
            g.get_f32(&format!("{arch}.rope.freq_base")).unwrap(),
            500000.0
        );
        let t = g.tensor("blk.0.attn_q.weight").unwrap();
        assert_eq!(t.ty, TensorType::Known(GgmlType::I2_S));
        assert_eq!(t.n_elements(), 65536);
        assert_eq!(t.data.len(), 65536 / 4 + 32);
        let scale = f32::from_le_bytes(t.data[16384..16388].try_into().unwrap());
        assert_eq!(scale, 0.75);
        assert_eq!(g.tensor("token_embd.weight").unwrap().dims, [256, 8]);
    }
}
