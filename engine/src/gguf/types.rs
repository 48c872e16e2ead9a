//! Tensor element types and metadata value types of GGUF.

use std::fmt;

/// ggml tensor types with a fixed block layout, numbered as in ggml's `enum ggml_type`
/// (and gguf-py's `GGMLQuantizationType`). `I2S` is bitnet.cpp's addition.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    IQ2_XXS = 16,
    IQ2_XS = 17,
    IQ3_XXS = 18,
    IQ1_S = 19,
    IQ4_NL = 20,
    IQ3_S = 21,
    IQ2_S = 22,
    IQ4_XS = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    IQ1_M = 29,
    BF16 = 30,
    TQ1_0 = 34,
    TQ2_0 = 35,
    /// bitnet.cpp I2_S: 2-bit ternary, 128-element blocks of 32 bytes, one f32 scale per
    /// tensor in a 32-byte tail.
    I2_S = 36,
}

/// Elements per I2_S block; a row length must be a multiple of it.
pub const I2S_BLOCK: u64 = 128;
/// Bytes of the I2_S per-tensor tail (the f32 scale sits in its first 4 bytes).
pub const I2S_TAIL_BYTES: u64 = 32;

/// Raw GGUF type id of bitnet.cpp's TL1 (its `GGML_TYPE_TL1`).
pub const TL1_TYPE_ID: u32 = 38;
/// Raw GGUF type id of bitnet.cpp's TL2 (its `GGML_TYPE_TL2`).
pub const TL2_TYPE_ID: u32 = 39;

impl GgmlType {
    /// Every known ggml type, in id order.
    pub const ALL: [GgmlType; 31] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::IQ2_XXS,
        GgmlType::IQ2_XS,
        GgmlType::IQ3_XXS,
        GgmlType::IQ1_S,
        GgmlType::IQ4_NL,
        GgmlType::IQ3_S,
        GgmlType::IQ2_S,
        GgmlType::IQ4_XS,
        GgmlType::I8,
        GgmlType::I16,
        GgmlType::I32,
        GgmlType::I64,
        GgmlType::F64,
        GgmlType::IQ1_M,
        GgmlType::BF16,
        GgmlType::TQ1_0,
        GgmlType::TQ2_0,
    ];

    /// The id stored in GGUF tensor infos.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// Looks up a type by its GGUF id.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        if id == GgmlType::I2_S as u32 {
            return Some(GgmlType::I2_S);
        }
        GgmlType::ALL.iter().copied().find(|t| t.id() == id)
    }

    /// `(elements per block, bytes per block)`. For I2_S this is the packed part only
    /// (128 elements in 32 bytes); the 32-byte tensor tail is added by [`GgmlType::byte_size`].
    pub fn block_layout(self) -> (u64, u64) {
        use GgmlType::*;
        match self {
            F32 => (1, 4),
            F16 | BF16 => (1, 2),
            Q4_0 => (32, 18),
            Q4_1 => (32, 20),
            Q5_0 => (32, 22),
            Q5_1 => (32, 24),
            Q8_0 => (32, 34),
            Q8_1 => (32, 40),
            Q2_K => (256, 84),
            Q3_K => (256, 110),
            Q4_K => (256, 144),
            Q5_K => (256, 176),
            Q6_K => (256, 210),
            Q8_K => (256, 292),
            IQ2_XXS => (256, 66),
            IQ2_XS => (256, 74),
            IQ3_XXS => (256, 98),
            IQ1_S => (256, 50),
            IQ4_NL => (32, 18),
            IQ3_S => (256, 110),
            IQ2_S => (256, 82),
            IQ4_XS => (256, 136),
            I8 => (1, 1),
            I16 => (1, 2),
            I32 => (1, 4),
            I64 | F64 => (1, 8),
            IQ1_M => (256, 56),
            TQ1_0 => (256, 54),
            TQ2_0 => (256, 66),
            I2_S => (I2S_BLOCK, 32),
        }
    }

    /// Bytes a tensor of this type with `dims` (ggml order: `dims[0]` is the row length)
    /// occupies in a file.
    pub fn byte_size(self, dims: &[u64]) -> Result<u64, SizeError> {
        let n = element_count(dims)?;
        let row = dims.first().copied().unwrap_or(1);
        let (block, block_bytes) = self.block_layout();
        if row % block != 0 {
            return Err(SizeError::RowNotBlockMultiple { row, block });
        }
        let packed = (n / block)
            .checked_mul(block_bytes)
            .ok_or(SizeError::Overflow)?;
        if self == GgmlType::I2_S {
            packed
                .checked_add(I2S_TAIL_BYTES)
                .ok_or(SizeError::Overflow)
        } else {
            Ok(packed)
        }
    }

    /// The upper-case name used by ggml (`"TQ2_0"`, `"I2_S"`, ...).
    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q8_1 => "Q8_1",
            Q2_K => "Q2_K",
            Q3_K => "Q3_K",
            Q4_K => "Q4_K",
            Q5_K => "Q5_K",
            Q6_K => "Q6_K",
            Q8_K => "Q8_K",
            IQ2_XXS => "IQ2_XXS",
            IQ2_XS => "IQ2_XS",
            IQ3_XXS => "IQ3_XXS",
            IQ1_S => "IQ1_S",
            IQ4_NL => "IQ4_NL",
            IQ3_S => "IQ3_S",
            IQ2_S => "IQ2_S",
            IQ4_XS => "IQ4_XS",
            I8 => "I8",
            I16 => "I16",
            I32 => "I32",
            I64 => "I64",
            F64 => "F64",
            IQ1_M => "IQ1_M",
            BF16 => "BF16",
            TQ1_0 => "TQ1_0",
            TQ2_0 => "TQ2_0",
            I2_S => "I2_S",
        }
    }
}

/// The two LUT formats whose byte size depends on a tiling recorded in metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LutFormat {
    Tl1,
    Tl2,
}

/// Computes the byte size of a TL1/TL2 tensor from its dims (ggml order), or `None` when
/// the shape is not valid for the tiling. Supplied by the engine (which knows the tiling).
pub type LutSizer = dyn Fn(LutFormat, &[u64]) -> Option<u64> + Send + Sync;

/// The type of a tensor in a GGUF file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TensorType {
    /// A type with a fixed block layout; its size follows from its dims.
    Known(GgmlType),
    /// TL1/TL2: the size comes from a [`LutSizer`].
    Lut(LutFormat),
}

impl TensorType {
    pub const F32: TensorType = TensorType::Known(GgmlType::F32);
    pub const F16: TensorType = TensorType::Known(GgmlType::F16);
    pub const TQ1_0: TensorType = TensorType::Known(GgmlType::TQ1_0);
    pub const TQ2_0: TensorType = TensorType::Known(GgmlType::TQ2_0);
    pub const I2_S: TensorType = TensorType::Known(GgmlType::I2_S);
    pub const TL1: TensorType = TensorType::Lut(LutFormat::Tl1);
    pub const TL2: TensorType = TensorType::Lut(LutFormat::Tl2);

    /// The id stored in GGUF tensor infos.
    pub fn id(self) -> u32 {
        match self {
            TensorType::Known(t) => t.id(),
            TensorType::Lut(LutFormat::Tl1) => TL1_TYPE_ID,
            TensorType::Lut(LutFormat::Tl2) => TL2_TYPE_ID,
        }
    }

    /// Looks up a type by its GGUF id.
    pub fn from_id(id: u32) -> Option<TensorType> {
        match id {
            TL1_TYPE_ID => Some(TensorType::TL1),
            TL2_TYPE_ID => Some(TensorType::TL2),
            _ => GgmlType::from_id(id).map(TensorType::Known),
        }
    }

    /// Byte size of a tensor with `dims`. `Ok(None)` means the size is unknown: a LUT type
    /// and no sizer given.
    pub fn byte_size(self, dims: &[u64], lut: Option<&LutSizer>) -> Result<Option<u64>, SizeError> {
        match self {
            TensorType::Known(t) => t.byte_size(dims).map(Some),
            TensorType::Lut(f) => {
                element_count(dims)?;
                match lut {
                    None => Ok(None),
                    Some(sizer) => sizer(f, dims).map(Some).ok_or(SizeError::LutRejected),
                }
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TensorType::Known(t) => t.name(),
            TensorType::Lut(LutFormat::Tl1) => "TL1",
            TensorType::Lut(LutFormat::Tl2) => "TL2",
        }
    }
}

impl From<GgmlType> for TensorType {
    fn from(t: GgmlType) -> Self {
        TensorType::Known(t)
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a tensor size could not be computed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("element count or byte size overflows u64")]
    Overflow,
    #[error("row length {row} is not a multiple of the block size {block}")]
    RowNotBlockMultiple { row: u64, block: u64 },
    #[error("the TL1/TL2 sizer rejected this shape")]
    LutRejected,
}

/// Product of the dims (1 for no dims), checked, each dim at most `i64::MAX` as in ggml.
pub fn element_count(dims: &[u64]) -> Result<u64, SizeError> {
    dims.iter().try_fold(1u64, |acc, &d| {
        if d > i64::MAX as u64 {
            return Err(SizeError::Overflow);
        }
        let n = acc.checked_mul(d).ok_or(SizeError::Overflow)?;
        if n > i64::MAX as u64 {
            Err(SizeError::Overflow)
        } else {
            Ok(n)
        }
    })
}

/// GGUF metadata value type ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    pub fn from_id(id: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        self as u32
    }

    /// Encoded size of one value of a fixed-size type; `None` for string and array.
    pub fn fixed_size(self) -> Option<u64> {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }

    /// The fewest bytes one encoded value of this type can take.
    pub fn min_encoded_size(self) -> u64 {
        match self {
            ValueType::String => 8,
            ValueType::Array => 12,
            t => t.fixed_size().unwrap_or(1),
        }
    }

    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Array),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A homogeneous metadata array; arrays may nest.
#[derive(Clone, Debug, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    /// Nested arrays (each element may have its own element type).
    Array(Vec<Array>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// The value as an integer, for any integer type (bools excluded).
    pub fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v.into(),
            Value::I8(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U64(v) => v.into(),
            Value::I64(v) => v.into(),
            _ => return None,
        })
    }
}

impl Array {
    pub fn element_type(&self) -> ValueType {
        match self {
            Array::U8(_) => ValueType::U8,
            Array::I8(_) => ValueType::I8,
            Array::U16(_) => ValueType::U16,
            Array::I16(_) => ValueType::I16,
            Array::U32(_) => ValueType::U32,
            Array::I32(_) => ValueType::I32,
            Array::F32(_) => ValueType::F32,
            Array::Bool(_) => ValueType::Bool,
            Array::String(_) => ValueType::String,
            Array::Array(_) => ValueType::Array,
            Array::U64(_) => ValueType::U64,
            Array::I64(_) => ValueType::I64,
            Array::F64(_) => ValueType::F64,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::Array(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

macro_rules! value_from {
    ($($t:ty => $v:ident),*) => {$(
        impl From<$t> for Value {
            fn from(x: $t) -> Self { Value::$v(x) }
        }
        impl From<Vec<$t>> for Array {
            fn from(x: Vec<$t>) -> Self { Array::$v(x) }
        }
        impl From<Vec<$t>> for Value {
            fn from(x: Vec<$t>) -> Self { Value::Array(Array::$v(x)) }
        }
    )*};
}
value_from!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, f32 => F32,
    bool => Bool, String => String, u64 => U64, i64 => I64, f64 => F64);

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}

impl From<Array> for Value {
    fn from(a: Array) -> Self {
        Value::Array(a)
    }
}

impl From<Vec<&str>> for Value {
    fn from(v: Vec<&str>) -> Self {
        Value::Array(Array::String(v.into_iter().map(str::to_owned).collect()))
    }
}

impl From<Vec<Array>> for Value {
    fn from(v: Vec<Array>) -> Self {
        Value::Array(Array::Array(v))
    }
}
