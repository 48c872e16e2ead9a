//! Each kind of malformed input yields its specific typed error.

use ternforge_engine::gguf::{Gguf, GgufError, GgufWriter, SizeError, TensorType, Value};

/// Hand-assembles GGUF bytes so that any field can be made wrong.
#[derive(Clone)]
struct Raw {
    magic: [u8; 4],
    version: u32,
    kv_count: Option<u64>,
    tensor_count: Option<u64>,
    kvs: Vec<Vec<u8>>,
    infos: Vec<Vec<u8>>,
    alignment: usize,
    data: Vec<u8>,
}

fn s(b: &[u8]) -> Vec<u8> {
    let mut v = (b.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(b);
    v
}

impl Raw {
    fn new() -> Self {
        Raw {
            magic: *b"GGUF",
            version: 3,
            kv_count: None,
            tensor_count: None,
            kvs: vec![],
            infos: vec![],
            alignment: 32,
            data: vec![],
        }
    }

    fn kv(mut self, key: &[u8], type_id: u32, value: &[u8]) -> Self {
        let mut v = s(key);
        v.extend_from_slice(&type_id.to_le_bytes());
        v.extend_from_slice(value);
        self.kvs.push(v);
        self
    }

    fn tensor(mut self, name: &[u8], dims: &[u64], type_id: u32, offset: u64) -> Self {
        let mut v = s(name);
        v.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            v.extend_from_slice(&d.to_le_bytes());
        }
        v.extend_from_slice(&type_id.to_le_bytes());
        v.extend_from_slice(&offset.to_le_bytes());
        self.infos.push(v);
        self
    }

    fn data(mut self, n: usize) -> Self {
        self.data = vec![0xab; n];
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut v = self.magic.to_vec();
        v.extend_from_slice(&self.version.to_le_bytes());
        v.extend_from_slice(
            &self
                .tensor_count
                .unwrap_or(self.infos.len() as u64)
                .to_le_bytes(),
        );
        v.extend_from_slice(&self.kv_count.unwrap_or(self.kvs.len() as u64).to_le_bytes());
        for kv in &self.kvs {
            v.extend_from_slice(kv);
        }
        for t in &self.infos {
            v.extend_from_slice(t);
        }
        while !v.len().is_multiple_of(self.alignment) {
            v.push(0);
        }
        v.extend_from_slice(&self.data);
        v
    }

    fn parse(&self) -> Result<(), GgufError> {
        Gguf::parse(self.bytes()).map(|_| ())
    }
}

fn u32le(x: u32) -> Vec<u8> {
    x.to_le_bytes().to_vec()
}

fn array(type_id: u32, len: u64, payload: &[u8]) -> Vec<u8> {
    let mut v = type_id.to_le_bytes().to_vec();
    v.extend_from_slice(&len.to_le_bytes());
    v.extend_from_slice(payload);
    v
}

const F32: u32 = 0;
const U32: u32 = 4;
const STRING: u32 = 8;
const ARRAY: u32 = 9;

#[test]
fn gguf_raw_builder_makes_valid_files() {
    let raw = Raw::new()
        .kv(b"general.architecture", STRING, &s(b"bitnet"))
        .tensor(b"a", &[4], F32, 0)
        .tensor(b"b", &[2, 2], F32, 32)
        .data(48);
    let g = Gguf::parse(raw.bytes()).unwrap();
    assert_eq!(g.get_str("general.architecture").unwrap(), "bitnet");
    assert_eq!(g.tensor("b").unwrap().data, &[0xab; 16]);
    // v2 has the same layout.
    let mut v2 = raw.clone();
    v2.version = 2;
    assert_eq!(Gguf::parse(v2.bytes()).unwrap().version(), 2);
}

#[test]
fn gguf_truncated_everywhere() {
    let mut w = GgufWriter::new();
    w.add_kv("a", Value::from(vec!["x", "yz"])).unwrap();
    w.add_kv("b", Value::F64(1.0)).unwrap();
    w.add_tensor("t", &[8], TensorType::F32, vec![1u8; 32])
        .unwrap();
    w.add_tensor("u", &[3], TensorType::F32, vec![2u8; 12])
        .unwrap();
    let bytes = w.to_bytes().unwrap();
    let g = Gguf::parse(&bytes[..]).unwrap();
    let data_end = (g.data_offset() + g.tensor_infos()[1].offset + 12) as usize;
    for cut in 0..data_end {
        match Gguf::parse(&bytes[..cut]) {
            Err(GgufError::Truncated { .. })
            | Err(GgufError::StringTooLong { .. })
            | Err(GgufError::CountTooLarge { .. })
            | Err(GgufError::TensorOutOfBounds { .. }) => {}
            r => panic!("cut at {cut}: {:?}", r.map(|_| ())),
        }
    }
    // Trailing alignment padding after the last tensor is optional.
    for cut in data_end..=bytes.len() {
        Gguf::parse(&bytes[..cut]).unwrap();
    }
    assert!(matches!(
        Gguf::parse(&b""[..]),
        Err(GgufError::Truncated { offset: 0, .. })
    ));
    match Gguf::parse(&bytes[..30]) {
        Err(GgufError::CountTooLarge { what, .. }) => assert_eq!(what, "metadata kv count"),
        r => panic!("{:?}", r.map(|_| ())),
    }
}

#[test]
fn gguf_bad_magic_and_version() {
    let mut r = Raw::new();
    r.magic = *b"GGML";
    assert!(matches!(r.parse(), Err(GgufError::BadMagic { found }) if &found == b"GGML"));
    for v in [0u32, 1, 4, 3 << 24] {
        let mut r = Raw::new();
        r.version = v;
        assert!(
            matches!(r.parse(), Err(GgufError::UnsupportedVersion { version }) if version == v)
        );
    }
}

#[test]
fn gguf_absurd_counts() {
    let mut r = Raw::new();
    r.tensor_count = Some(u64::MAX);
    match r.parse() {
        Err(GgufError::CountTooLarge { what, count, .. }) => {
            assert_eq!((what.as_str(), count), ("tensor count", u64::MAX));
        }
        r => panic!("{r:?}"),
    }
    let mut r = Raw::new().tensor(b"a", &[1], F32, 0).data(4);
    r.tensor_count = Some(2);
    assert!(matches!(
        r.parse(),
        Err(GgufError::CountTooLarge { .. } | GgufError::Truncated { .. })
    ));

    let mut r = Raw::new();
    r.kv_count = Some(1 << 40);
    assert!(
        matches!(r.parse(), Err(GgufError::CountTooLarge { what, .. }) if what == "metadata kv count")
    );

    // A key whose length claims more bytes than the file has.
    let mut r = Raw::new();
    r.kv_count = Some(1);
    let mut b = r.bytes()[..24].to_vec();
    b.extend_from_slice(&u64::MAX.to_le_bytes());
    b.extend_from_slice(b"abcdefghij");
    match Gguf::parse(b) {
        Err(GgufError::StringTooLong { what, len, .. }) => {
            assert_eq!((what.as_str(), len), ("metadata key #0", u64::MAX));
        }
        r => panic!("{:?}", r.map(|_| ())),
    }

    // A string value too long.
    let mut val = (1u64 << 62).to_le_bytes().to_vec();
    val.extend_from_slice(b"xy");
    let r = Raw::new().kv(b"name", STRING, &val);
    assert!(
        matches!(r.parse(), Err(GgufError::StringTooLong { what, .. }) if what.contains("\"name\""))
    );

    // Arrays whose length cannot fit: fixed-size, string and nested element types.
    for (ty, len) in [
        (U32, 1u64 << 62),
        (U32, 100),
        (STRING, 1 << 40),
        (ARRAY, 1 << 40),
        (0, u64::MAX),
    ] {
        let r = Raw::new().kv(b"arr", ARRAY, &array(ty, len, &[0; 16]));
        match r.parse() {
            Err(GgufError::CountTooLarge { what, count, .. }) => {
                assert!(what.contains("\"arr\""), "{what}");
                assert_eq!(count, len);
            }
            r => panic!("type {ty} len {len}: {r:?}"),
        }
    }
    // A string array with a plausible count but an element too long.
    let mut payload = s(b"ok");
    payload.extend_from_slice(&u64::MAX.to_le_bytes());
    let r = Raw::new().kv(b"toks", ARRAY, &array(STRING, 2, &payload));
    assert!(
        matches!(r.parse(), Err(GgufError::StringTooLong { what, .. }) if what == "string #1 of array \"toks\"")
    );
}

#[test]
fn gguf_bad_metadata_values() {
    let r = Raw::new().kv(b"k", 13, &[0; 8]);
    assert!(
        matches!(r.parse(), Err(GgufError::UnknownValueType { key, type_id: 13 }) if key == "k")
    );
    let r = Raw::new().kv(b"k", ARRAY, &array(99, 0, &[]));
    assert!(
        matches!(r.parse(), Err(GgufError::UnknownValueType { key, type_id: 99 }) if key == "k")
    );
    let r = Raw::new().kv(b"flag", 7, &[2]);
    assert!(matches!(r.parse(), Err(GgufError::InvalidBool { key, byte: 2 }) if key == "flag"));
    let r = Raw::new().kv(b"flags", ARRAY, &array(7, 3, &[0, 1, 255]));
    assert!(matches!(r.parse(), Err(GgufError::InvalidBool { key, byte: 255 }) if key == "flags"));

    // Non-UTF-8 key, string value, array element, tensor name.
    let r = Raw::new().kv(b"k\xff", U32, &u32le(1));
    assert!(matches!(r.parse(), Err(GgufError::InvalidUtf8 { what }) if what == "metadata key #0"));
    let r = Raw::new().kv(b"k", STRING, &s(b"\xc3\x28"));
    assert!(matches!(r.parse(), Err(GgufError::InvalidUtf8 { what }) if what.contains("\"k\"")));
    let r = Raw::new().kv(b"k", ARRAY, &array(STRING, 1, &s(b"\x80")));
    assert!(matches!(r.parse(), Err(GgufError::InvalidUtf8 { what }) if what.contains("\"k\"")));
    let r = Raw::new().tensor(b"\xfe", &[1], F32, 0).data(4);
    assert!(
        matches!(r.parse(), Err(GgufError::InvalidUtf8 { what }) if what == "name of tensor #0")
    );

    // Duplicate keys.
    let r = Raw::new().kv(b"k", U32, &u32le(1)).kv(b"k", U32, &u32le(2));
    assert!(matches!(r.parse(), Err(GgufError::DuplicateKey { key }) if key == "k"));

    // Nesting: 16 levels are fine, 17 are not.
    let nest = |levels: usize| {
        let mut v = Vec::new();
        for _ in 1..levels {
            v.extend_from_slice(&array(ARRAY, 1, &[]));
        }
        v.extend_from_slice(&array(U32, 0, &[]));
        v
    };
    Raw::new().kv(b"deep", ARRAY, &nest(16)).parse().unwrap();
    let r = Raw::new().kv(b"deep", ARRAY, &nest(17));
    assert!(matches!(r.parse(), Err(GgufError::ArrayTooDeep { key, max: 16 }) if key == "deep"));
    // Deep nesting in a long file cannot overflow the stack.
    let r = Raw::new().kv(b"deep", ARRAY, &nest(100_000));
    assert!(matches!(r.parse(), Err(GgufError::ArrayTooDeep { .. })));
}

#[test]
fn gguf_bad_alignment() {
    for a in [0u32, 3, 48, 1 << 31] {
        let r = Raw::new().kv(b"general.alignment", U32, &u32le(a));
        assert!(
            matches!(r.parse(), Err(GgufError::BadAlignment { value }) if value == a as u64),
            "{a}"
        );
    }
    let r = Raw::new().kv(b"general.alignment", 6, &1.0f32.to_le_bytes());
    assert!(
        matches!(r.parse(), Err(GgufError::WrongType { key, .. }) if key == "general.alignment")
    );
    let r = Raw::new().kv(b"general.alignment", 5, &(-32i32).to_le_bytes());
    assert!(matches!(r.parse(), Err(GgufError::BadAlignment { .. })));
    // A valid non-default alignment moves the data section.
    let mut r = Raw::new()
        .kv(b"general.alignment", U32, &u32le(64))
        .tensor(b"a", &[1], F32, 0)
        .data(4);
    r.alignment = 64;
    let g = Gguf::parse(r.bytes()).unwrap();
    assert_eq!((g.alignment(), g.data_offset() % 64), (64, 0));
}

#[test]
fn gguf_bad_dims_and_types() {
    let r = Raw::new().tensor(b"t", &[1, 1, 1, 1, 1], F32, 0).data(4);
    assert!(
        matches!(r.parse(), Err(GgufError::TooManyDims { tensor, n_dims: 5 }) if tensor == "t")
    );
    let mut r = Raw::new();
    r.tensor_count = Some(1);
    let mut b = r.bytes()[..24].to_vec();
    b.extend_from_slice(&s(b"t"));
    b.extend_from_slice(&u32::MAX.to_le_bytes());
    b.extend_from_slice(&[0; 64]);
    assert!(matches!(Gguf::parse(b), Err(GgufError::TooManyDims { .. })));

    for dims in [
        vec![1u64 << 32, 1 << 32],
        vec![u64::MAX],
        vec![1 << 62, 4],
        vec![2, 2, 1 << 62],
    ] {
        let r = Raw::new().tensor(b"big", &dims, F32, 0).data(4);
        match r.parse() {
            Err(GgufError::BadShape { tensor, source, .. }) => {
                assert_eq!((tensor.as_str(), source), ("big", SizeError::Overflow));
            }
            r => panic!("{dims:?}: {r:?}"),
        }
    }
    // Element count fine but byte size overflows.
    let r = Raw::new().tensor(b"big", &[1 << 62], 28, 0).data(8);
    assert!(matches!(
        r.parse(),
        Err(GgufError::BadShape {
            source: SizeError::Overflow,
            ..
        })
    ));

    // Row length not a multiple of the block.
    for (ty, row, block) in [
        (8u32, 33u64, 32u64),
        (34, 128, 256),
        (35, 100, 256),
        (36, 64, 128),
    ] {
        let r = Raw::new().tensor(b"q", &[row, 2], ty, 0).data(4096);
        match r.parse() {
            Err(GgufError::BadShape { tensor, source, .. }) => {
                assert_eq!(tensor, "q");
                assert_eq!(source, SizeError::RowNotBlockMultiple { row, block });
            }
            r => panic!("type {ty}: {r:?}"),
        }
    }
    for ty in [4u32, 5, 31, 32, 33, 37, 40, 1000] {
        let r = Raw::new().tensor(b"x", &[1], ty, 0).data(64);
        assert!(
            matches!(r.parse(), Err(GgufError::UnknownTensorType { tensor, type_id }) if tensor == "x" && type_id == ty)
        );
    }
    // Zero dims is a scalar; a zero-length dim an empty tensor.
    let g = Gguf::parse(
        Raw::new()
            .tensor(b"s", &[], F32, 0)
            .tensor(b"e", &[0, 3], F32, 32)
            .data(36)
            .bytes(),
    )
    .unwrap();
    assert_eq!(g.tensor("s").unwrap().data.len(), 4);
    assert_eq!(g.tensor("e").unwrap().data.len(), 0);
}

#[test]
fn gguf_bad_tensor_placement() {
    // Past the end.
    let r = Raw::new().tensor(b"a", &[8], F32, 0).data(31);
    match r.parse() {
        Err(GgufError::TensorOutOfBounds {
            tensor,
            offset: 0,
            size: 32,
            data_len: 31,
        }) => assert_eq!(tensor, "a"),
        r => panic!("{r:?}"),
    }
    let r = Raw::new().tensor(b"a", &[1], F32, 1 << 40).data(64);
    assert!(matches!(r.parse(), Err(GgufError::TensorOutOfBounds { tensor, .. }) if tensor == "a"));
    let r = Raw::new().tensor(b"a", &[1], F32, u64::MAX - 31).data(64);
    assert!(matches!(
        r.parse(),
        Err(GgufError::TensorOutOfBounds { .. })
    ));
    // No data section at all (file ends before the aligned data offset).
    let mut b = Raw::new().tensor(b"a", &[0], F32, 0).bytes();
    let full = b.len();
    b.truncate(full - 1);
    assert!(matches!(
        Gguf::parse(b),
        Err(GgufError::TensorOutOfBounds { .. })
    ));

    // Misaligned.
    let r = Raw::new().tensor(b"a", &[1], F32, 4).data(64);
    assert!(
        matches!(r.parse(), Err(GgufError::MisalignedOffset { tensor, offset: 4, alignment: 32 }) if tensor == "a")
    );

    // Overlapping: a declared size running into the next tensor ("wrong tensor size").
    let r = Raw::new()
        .tensor(b"a", &[16], F32, 0)
        .tensor(b"b", &[1], F32, 32)
        .data(64);
    match r.parse() {
        Err(GgufError::OverlappingTensors { first, second }) => {
            assert_eq!((first.as_str(), second.as_str()), ("a", "b"))
        }
        r => panic!("{r:?}"),
    }
    // Same offset, listed in either order.
    let r = Raw::new()
        .tensor(b"b", &[1], F32, 32)
        .tensor(b"a", &[2], F32, 32)
        .data(64);
    assert!(matches!(
        r.parse(),
        Err(GgufError::OverlappingTensors { .. })
    ));
    // Overlap hidden behind an empty tensor in between.
    let r = Raw::new()
        .tensor(b"a", &[24], F32, 0)
        .tensor(b"e", &[0], F32, 32)
        .tensor(b"c", &[1], F32, 64)
        .data(96);
    assert!(
        matches!(r.parse(), Err(GgufError::OverlappingTensors { first, second }) if first == "a" && second == "c")
    );
    // TL1 without a sizer at the same offset as another tensor.
    let r = Raw::new()
        .tensor(b"lut", &[8], 38, 0)
        .tensor(b"f", &[1], F32, 0)
        .data(64);
    assert!(matches!(
        r.parse(),
        Err(GgufError::OverlappingTensors { .. })
    ));

    // Duplicate tensor names.
    let r = Raw::new()
        .tensor(b"a", &[1], F32, 0)
        .tensor(b"a", &[1], F32, 32)
        .data(64);
    assert!(matches!(r.parse(), Err(GgufError::DuplicateTensor { name }) if name == "a"));
}

#[test]
fn gguf_error_messages_name_the_culprit() {
    let r = Raw::new()
        .tensor(b"blk.3.ffn_down.weight", &[64, 2], 36, 0)
        .data(4096);
    let msg = r.parse().unwrap_err().to_string();
    assert!(
        msg.contains("blk.3.ffn_down.weight") && msg.contains("I2_S") && msg.contains("128"),
        "{msg}"
    );
    let r = Raw::new().kv(
        b"tokenizer.ggml.tokens",
        ARRAY,
        &array(STRING, 1 << 50, &[]),
    );
    let msg = r.parse().unwrap_err().to_string();
    assert!(msg.contains("tokenizer.ggml.tokens"), "{msg}");
}

#[test]
fn gguf_many_tensors_at_one_offset_fail_fast() {
    // 50k TL1 tensors (size unknown without a sizer) all at offset 0: rejected as
    // overlapping, in time linear-ish in the count.
    let mut r = Raw::new();
    for i in 0..50_000u32 {
        r = r.tensor(format!("t{i}").as_bytes(), &[8], 38, 0);
    }
    let r = r.data(64);
    let t = std::time::Instant::now();
    assert!(matches!(
        r.parse(),
        Err(GgufError::OverlappingTensors { .. })
    ));
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        t.elapsed()
    );
}
