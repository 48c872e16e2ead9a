//! Interoperability with the PyPI `gguf` package, through committed fixtures made by
//! `engine/tests/data-gen/gguf_interop.py` (see there; Python is not needed here).

use std::path::PathBuf;

use half::f16;
use ternforge_engine::gguf::{Array, GgmlType, Gguf, GgufWriter, TensorType, Value};

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

#[test]
fn gguf_reads_file_written_by_gguf_py() {
    let g = Gguf::open(data_dir().join("gguf_py_fixture.bin")).unwrap();
    let expected = std::fs::read(data_dir().join("gguf_py_fixture.expected.bin")).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.alignment(), 32);
    assert_eq!(g.get_str("general.architecture").unwrap(), "bitnet");
    assert_eq!(g.get_u32("bitnet.block_count").unwrap(), 2);
    assert_eq!(g.get_u64("test.u64").unwrap(), 1 << 40);
    assert_eq!(g.get("test.i32"), Some(&Value::I32(-7)));
    assert_eq!(
        g.get_f32("bitnet.attention.layer_norm_rms_epsilon")
            .unwrap(),
        1e-5
    );
    assert_eq!(g.get("test.f64"), Some(&Value::F64(0.125)));
    assert!(g.get_bool("test.bool").unwrap());
    assert_eq!(g.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert_eq!(
        g.get_str_array("tokenizer.ggml.tokens").unwrap(),
        ["<s>", "Ġhello", "日本"]
    );
    assert_eq!(
        g.get_i32_array("tokenizer.ggml.token_type").unwrap(),
        [1, 1, 3]
    );
    assert_eq!(
        g.get_f32_array("tokenizer.ggml.scores").unwrap(),
        [0.0, -1.5, 2.25]
    );

    let want = [
        (
            "blk.0.ffn_down.weight",
            TensorType::TQ1_0,
            vec![256, 2],
            2 * 54,
        ),
        (
            "blk.0.ffn_up.weight",
            TensorType::TQ2_0,
            vec![512, 3],
            6 * 66,
        ),
        ("token_embd.weight", TensorType::F16, vec![256, 2], 1024),
        ("output_norm.weight", TensorType::F32, vec![25, 4], 400),
    ];
    let mut at = 0;
    assert_eq!(g.tensor_infos().len(), want.len());
    for (t, (name, ty, dims, size)) in g.tensors().zip(want) {
        assert_eq!((t.name, t.ty, t.dims), (name, ty, &dims[..]));
        assert_eq!(t.data, &expected[at..at + size], "{name}");
        at += size;
    }
    assert_eq!(at, expected.len());
    let norm = g.tensor("output_norm.weight").unwrap().data;
    assert_eq!(&norm[..4], &(-50.0f32).to_le_bytes());
}

/// TQ2_0 packing as described in shared/formats.md: per 256-element block, 64 bytes of
/// 2-bit codes (c = w + 1; in each 32-byte half, byte m holds elements m, m+32, m+64, m+96
/// at bits 1:0, 3:2, 5:4, 7:6), then the f16 scale.
fn pack_tq2_0(w: &[i8], d: f32) -> Vec<u8> {
    let mut out = Vec::new();
    for block in w.chunks(256) {
        for half in block.chunks(128) {
            for m in 0..32 {
                let mut byte = 0u8;
                for j in 0..4 {
                    byte |= ((half[m + 32 * j] + 1) as u8) << (2 * j);
                }
                out.push(byte);
            }
        }
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    }
    out
}

/// The file `gguf_interop.py check` reads with gguf.GGUFReader.
fn ternforge_written() -> Vec<u8> {
    let py = std::fs::read(data_dir().join("gguf_py_fixture.expected.bin")).unwrap();
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", "bitnet-b1.58").unwrap();
    w.set_alignment(64).unwrap();
    w.add_kv("bitnet-b1.58.block_count", Value::U32(30))
        .unwrap();
    w.add_kv("bitnet-b1.58.rope.freq_base", Value::F32(500000.0))
        .unwrap();
    w.add_kv("test.bool", true).unwrap();
    w.add_kv("test.i8", Value::I8(-3)).unwrap();
    w.add_kv("test.u16", Value::U16(65000)).unwrap();
    w.add_kv("test.i64", Value::I64(-(1 << 40))).unwrap();
    w.add_kv("test.f64", Value::F64(0.1)).unwrap();
    w.add_kv("tokenizer.ggml.tokens", vec!["a", "Ġb", "日本"])
        .unwrap();
    w.add_kv("tokenizer.ggml.token_type", vec![1i32, 2, 3])
        .unwrap();
    w.add_kv("tokenizer.ggml.scores", vec![0.5f32, -0.25])
        .unwrap();
    w.add_kv(
        "test.nested",
        vec![Array::from(vec![1i32, 2]), Array::from(vec![3i32])],
    )
    .unwrap();

    let norm: Vec<u8> = (0..40)
        .flat_map(|i| (i as f32 / 8.0).to_le_bytes())
        .collect();
    w.add_tensor("output_norm.weight", &[40], TensorType::F32, norm)
        .unwrap();
    let embd: Vec<u8> = (0..512)
        .flat_map(|i| f16::from_f32((i % 7) as f32).to_le_bytes())
        .collect();
    w.add_tensor("token_embd.weight", &[256, 2], TensorType::F16, embd)
        .unwrap();
    let tern: Vec<i8> = (0..512).map(|i| ((i * 7) % 3) as i8 - 1).collect();
    w.add_tensor(
        "blk.0.ffn_up.weight",
        &[256, 2],
        TensorType::TQ2_0,
        pack_tq2_0(&tern, 0.5),
    )
    .unwrap();
    // gguf's own TQ1_0 bytes, carried over from its fixture.
    w.add_tensor(
        "blk.0.ffn_down.weight",
        &[256, 2],
        GgmlType::TQ1_0.into(),
        py[..108].to_vec(),
    )
    .unwrap();
    w.to_bytes().unwrap()
}

#[test]
fn gguf_writer_output_matches_fixture_checked_by_gguf_py() {
    let bytes = ternforge_written();
    let path = data_dir().join("ternforge_writer_fixture.bin");
    if std::env::var_os("TERNFORGE_REGEN_FIXTURES").is_some() {
        std::fs::write(&path, &bytes).unwrap();
    }
    let committed = std::fs::read(&path).unwrap();
    assert!(
        committed == bytes,
        "writer output changed; regenerate and re-check with gguf_interop.py"
    );
    let g = Gguf::parse(&committed[..]).unwrap();
    assert_eq!(g.alignment(), 64);
    assert_eq!(g.tensor_infos().len(), 4);
}
