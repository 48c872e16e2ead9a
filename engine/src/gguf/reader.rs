//! GGUF v2/v3 parser: metadata is decoded into owned values, tensor data stays in the
//! caller's buffer (or the memory map) and is handed out as borrowed slices.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use super::error::{GgufError, Result};
use super::metadata::Metadata;
use super::types::{Array, LutSizer, TensorType, Value, ValueType};
use super::{DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ALIGNMENT, MAX_ARRAY_DEPTH, MAX_DIMS};

/// Parser settings.
#[derive(Clone, Copy, Default)]
pub struct ParseOptions<'s> {
    /// Byte sizes of TL1/TL2 tensors. Without it such a tensor's extent is taken as
    /// "up to the next tensor (or the end of the file)", alignment padding included.
    pub lut_sizer: Option<&'s LutSizer>,
}

/// One tensor's directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the row length (fastest-varying).
    pub dims: Vec<u64>,
    pub ty: TensorType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    /// Bytes of data: exact when `size_known`, otherwise the extent up to the next tensor.
    pub size: u64,
    /// False for TL1/TL2 tensors parsed without a [`LutSizer`].
    pub size_known: bool,
}

/// A zero-copy view of one tensor.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    pub name: &'a str,
    pub dims: &'a [u64],
    pub ty: TensorType,
    pub data: &'a [u8],
    /// See [`TensorInfo::size_known`].
    pub size_known: bool,
}

impl TensorView<'_> {
    /// Number of elements (product of dims). Checked at parse time, so it cannot overflow.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF file over any byte container: `Gguf<Mmap>` from [`Gguf::open`],
/// `Gguf<&[u8]>` or `Gguf<Vec<u8>>` from [`Gguf::parse`].
///
/// Tensor offsets are aligned relative to the start of the buffer; a memory map starts on
/// a page boundary, so there `data` pointers are aligned too. A heap buffer carries no
/// such guarantee.
pub struct Gguf<D> {
    data: D,
    layout: Layout,
}

/// A GGUF file opened through a memory map.
pub type GgufFile = Gguf<Mmap>;

impl<D> std::fmt::Debug for Gguf<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("version", &self.layout.version)
            .field("alignment", &self.layout.alignment)
            .field("data_offset", &self.layout.data_offset)
            .field("metadata_len", &self.layout.metadata.len())
            .field("tensors", &self.layout.tensors.len())
            .finish()
    }
}

struct Layout {
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
}

impl Gguf<Mmap> {
    /// Memory-maps and parses the file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, ParseOptions::default())
    }

    pub fn open_with(path: impl AsRef<Path>, opts: ParseOptions<'_>) -> Result<Self> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < HEADER_LEN {
            return Err(GgufError::Truncated {
                what: "header".into(),
                offset: 0,
                needed: HEADER_LEN,
                available: len,
            });
        }
        // SAFETY: the map is read-only and lives as long as the returned value. Mapping is
        // only unsound if another process truncates or rewrites the file while it is
        // mapped; model files are treated as immutable while open (the writer replaces
        // files by atomic rename, which leaves existing maps on the old inode).
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse_with(map, opts)
    }
}

impl<D: AsRef<[u8]>> Gguf<D> {
    /// Parses GGUF from an in-memory buffer.
    pub fn parse(data: D) -> Result<Self> {
        Self::parse_with(data, ParseOptions::default())
    }

    pub fn parse_with(data: D, opts: ParseOptions<'_>) -> Result<Self> {
        let layout = parse_layout(data.as_ref(), opts)?;
        Ok(Gguf { data, layout })
    }

    /// The file version (2 or 3).
    pub fn version(&self) -> u32 {
        self.layout.version
    }

    /// Data alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.layout.alignment
    }

    /// Absolute file offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.layout.data_offset
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        self.data.as_ref()
    }

    pub fn metadata(&self) -> &Metadata {
        &self.layout.metadata
    }

    /// Tensor directory, in file order.
    pub fn tensor_infos(&self) -> &[TensorInfo] {
        &self.layout.tensors
    }

    /// Views of all tensors, in file order.
    pub fn tensors(&self) -> impl Iterator<Item = TensorView<'_>> + '_ {
        self.layout.tensors.iter().map(|t| self.view(t))
    }

    pub fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
        let i = *self.layout.index.get(name)?;
        Some(self.view(&self.layout.tensors[i]))
    }

    fn view<'a>(&'a self, t: &'a TensorInfo) -> TensorView<'a> {
        // Bounds were checked while parsing; these conversions cannot fail.
        let start = (self.layout.data_offset + t.offset) as usize;
        let end = start + t.size as usize;
        TensorView {
            name: &t.name,
            dims: &t.dims,
            ty: t.ty,
            data: &self.data.as_ref()[start..end],
            size_known: t.size_known,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.layout.metadata.get(key)
    }
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.layout.metadata.get_str(key)
    }
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        self.layout.metadata.get_u32(key)
    }
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.layout.metadata.get_u64(key)
    }
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        self.layout.metadata.get_f32(key)
    }
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        self.layout.metadata.get_bool(key)
    }
    pub fn get_str_array(&self, key: &str) -> Result<&[String]> {
        self.layout.metadata.get_str_array(key)
    }
    pub fn get_i32_array(&self, key: &str) -> Result<&[i32]> {
        self.layout.metadata.get_i32_array(key)
    }
    pub fn get_f32_array(&self, key: &str) -> Result<&[f32]> {
        self.layout.metadata.get_f32_array(key)
    }
}

/// Most elements reserved ahead for a count read from the file. Counts are first checked
/// against the bytes left, but in a large file (tensor data after the metadata) a lying
/// count could still reserve a multiple of the file size in owned elements (a `String` is
/// 24 bytes, its encoding can be 8): beyond this, vectors grow only as elements parse.
const PREALLOC_CAP: usize = 1 << 16;

/// magic + version + tensor count + kv count.
const HEADER_LEN: u64 = 4 + 4 + 8 + 8;
/// name length + n_dims + type + offset, with an empty name and no dims.
const MIN_TENSOR_INFO: u64 = 8 + 4 + 4 + 8;
/// key length + value type + the smallest value.
const MIN_KV: u64 = 8 + 4 + 1;

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                what: what(),
                offset: self.pos as u64,
                needed: n,
                available: self.remaining(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let len = self.u64(what)?;
        if len > self.remaining() {
            return Err(GgufError::StringTooLong {
                what: what(),
                len,
                available: self.remaining(),
            });
        }
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| GgufError::InvalidUtf8 { what: what() })
    }

    /// Checks that `count` items of at least `min_each` bytes could fit in what is left,
    /// before anything is allocated for them.
    fn check_count(&self, count: u64, min_each: u64, what: &dyn Fn() -> String) -> Result<()> {
        let fits = count
            .checked_mul(min_each)
            .is_some_and(|b| b <= self.remaining());
        if fits {
            Ok(())
        } else {
            Err(GgufError::CountTooLarge {
                what: what(),
                count,
                min_each,
                available: self.remaining(),
            })
        }
    }

    fn value(&mut self, ty: ValueType, key: &str, depth: u32) -> Result<Value> {
        let what = || format!("value of key {key:?}");
        Ok(match ty {
            ValueType::U8 => Value::U8(u8::from_le_bytes(self.array(&what)?)),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array(&what)?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(&what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(&what)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(&what)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(&what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(&what)?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(&what)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(&what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(&what)?)),
            ValueType::Bool => Value::Bool(bool_byte(self.array::<1>(&what)?[0], key)?),
            ValueType::String => Value::String(self.string(&what)?),
            ValueType::Array => Value::Array(self.array_value(key, depth)?),
        })
    }

    fn array_value(&mut self, key: &str, depth: u32) -> Result<Array> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(GgufError::ArrayTooDeep {
                key: key.to_owned(),
                max: MAX_ARRAY_DEPTH,
            });
        }
        let what = || format!("array of key {key:?}");
        let type_id = self.u32(&what)?;
        let ty = ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
            key: key.to_owned(),
            type_id,
        })?;
        let len = self.u64(&what)?;
        self.check_count(len, ty.min_encoded_size(), &what)?;
        let n = len as usize; // fits: len * min_size <= remaining bytes
        macro_rules! fixed {
            ($variant:ident, $t:ty) => {{
                let bytes = self.take(len * std::mem::size_of::<$t>() as u64, &what)?;
                Array::$variant(
                    bytes
                        .chunks_exact(std::mem::size_of::<$t>())
                        .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk size")))
                        .collect(),
                )
            }};
        }
        Ok(match ty {
            ValueType::U8 => Array::U8(self.take(len, &what)?.to_vec()),
            ValueType::I8 => fixed!(I8, i8),
            ValueType::U16 => fixed!(U16, u16),
            ValueType::I16 => fixed!(I16, i16),
            ValueType::U32 => fixed!(U32, u32),
            ValueType::I32 => fixed!(I32, i32),
            ValueType::F32 => fixed!(F32, f32),
            ValueType::U64 => fixed!(U64, u64),
            ValueType::I64 => fixed!(I64, i64),
            ValueType::F64 => fixed!(F64, f64),
            ValueType::Bool => Array::Bool(
                self.take(len, &what)?
                    .iter()
                    .map(|&b| bool_byte(b, key))
                    .collect::<Result<_>>()?,
            ),
            ValueType::String => {
                let mut v = Vec::with_capacity(n.min(PREALLOC_CAP));
                for i in 0..n {
                    v.push(self.string(&|| format!("string #{i} of array {key:?}"))?);
                }
                Array::String(v)
            }
            ValueType::Array => {
                let mut v = Vec::with_capacity(n.min(PREALLOC_CAP));
                for _ in 0..n {
                    v.push(self.array_value(key, depth + 1)?);
                }
                Array::Array(v)
            }
        })
    }
}

fn bool_byte(b: u8, key: &str) -> Result<bool> {
    match b {
        0 => Ok(false),
        1 => Ok(true),
        byte => Err(GgufError::InvalidBool {
            key: key.to_owned(),
            byte,
        }),
    }
}

/// Rounds `x` up to a multiple of `align` (a power of two), checked.
pub(crate) fn align_up(x: u64, align: u64) -> Option<u64> {
    x.checked_add(align - 1).map(|v| v & !(align - 1))
}

/// Validates a `general.alignment` value.
pub(crate) fn check_alignment(v: u64) -> Result<u64> {
    if v.is_power_of_two() && v <= MAX_ALIGNMENT {
        Ok(v)
    } else {
        Err(GgufError::BadAlignment { value: v })
    }
}

fn parse_layout(buf: &[u8], opts: ParseOptions<'_>) -> Result<Layout> {
    let mut c = Cursor { buf, pos: 0 };
    let header = || "header".to_owned();
    let magic: [u8; 4] = c.array(&header)?;
    if magic != GGUF_MAGIC {
        return Err(GgufError::BadMagic { found: magic });
    }
    let version = c.u32(&header)?;
    if version != 2 && version != 3 {
        return Err(GgufError::UnsupportedVersion { version });
    }
    let n_tensors = c.u64(&header)?;
    let n_kv = c.u64(&header)?;
    c.check_count(n_kv, MIN_KV, &|| "metadata kv count".to_owned())?;

    let mut metadata = Metadata::default();
    for i in 0..n_kv {
        let key = c.string(&|| format!("metadata key #{i}"))?;
        let type_id = c.u32(&|| format!("type of key {key:?}"))?;
        let ty = ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
            key: key.clone(),
            type_id,
        })?;
        let value = c.value(ty, &key, 0)?;
        metadata.insert(key, value)?;
    }

    let alignment = match metadata.get(super::KEY_ALIGNMENT) {
        None => DEFAULT_ALIGNMENT,
        Some(v) => {
            let a = v.as_i128().ok_or_else(|| GgufError::WrongType {
                key: super::KEY_ALIGNMENT.to_owned(),
                expected: "an unsigned integer",
                found: v.value_type().name().to_owned(),
            })?;
            check_alignment(u64::try_from(a).unwrap_or(0))?
        }
    };

    c.check_count(n_tensors, MIN_TENSOR_INFO, &|| "tensor count".to_owned())?;
    let cap = (n_tensors as usize).min(PREALLOC_CAP);
    let mut raw = Vec::with_capacity(cap);
    let mut index = HashMap::with_capacity(cap);
    for i in 0..n_tensors {
        let name = c.string(&|| format!("name of tensor #{i}"))?;
        let what = || format!("info of tensor {name:?}");
        let n_dims = c.u32(&what)?;
        if n_dims > MAX_DIMS {
            return Err(GgufError::TooManyDims {
                tensor: name,
                n_dims,
            });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64(&what)?);
        }
        let type_id = c.u32(&what)?;
        let offset = c.u64(&what)?;
        let ty = TensorType::from_id(type_id).ok_or_else(|| GgufError::UnknownTensorType {
            tensor: name.clone(),
            type_id,
        })?;
        if index.insert(name.clone(), raw.len()).is_some() {
            return Err(GgufError::DuplicateTensor { name });
        }
        raw.push((name, dims, ty, offset));
    }

    let data_offset =
        align_up(c.pos as u64, alignment).ok_or(GgufError::BadAlignment { value: alignment })?;
    let data_len = (buf.len() as u64).saturating_sub(data_offset);

    let mut tensors = Vec::with_capacity(raw.len());
    for (name, dims, ty, offset) in raw {
        let size = ty
            .byte_size(&dims, opts.lut_sizer)
            .map_err(|source| GgufError::BadShape {
                tensor: name.clone(),
                ty: ty.name().to_owned(),
                dims: dims.clone(),
                source,
            })?;
        if offset % alignment != 0 {
            return Err(GgufError::MisalignedOffset {
                tensor: name,
                offset,
                alignment,
            });
        }
        let size_known = size.is_some();
        let size = size.unwrap_or(0);
        let end = data_offset
            .checked_add(offset)
            .and_then(|x| x.checked_add(size));
        if end.is_none_or(|end| end > buf.len() as u64) {
            return Err(GgufError::TensorOutOfBounds {
                tensor: name,
                offset,
                size,
                data_len,
            });
        }
        tensors.push(TensorInfo {
            name,
            dims,
            ty,
            offset,
            size,
            size_known,
        });
    }

    // Tensors sorted by (offset, size): fill in unknown extents, then check for overlap.
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| (tensors[i].offset, tensors[i].size));
    // Walking back over groups of equal offsets, `next_start` is the smallest offset
    // greater than the group's (or the end of the data); offsets are <= data_len here.
    let mut next_start = data_len;
    let mut k = order.len();
    while k > 0 {
        let o = tensors[order[k - 1]].offset;
        let mut j = k;
        while j > 0 && tensors[order[j - 1]].offset == o {
            j -= 1;
        }
        for &i in &order[j..k] {
            if !tensors[i].size_known {
                tensors[i].size = next_start - o;
            }
        }
        next_start = o;
        k = j;
    }
    // Walk non-empty tensors by offset, remembering the one that reaches furthest.
    let mut furthest: Option<usize> = None;
    for &i in &order {
        let t = &tensors[i];
        if t.size == 0 {
            continue;
        }
        if let Some(p) = furthest {
            let prev = &tensors[p];
            // Both are in bounds, so the sum cannot overflow.
            if prev.offset + prev.size > t.offset {
                return Err(GgufError::OverlappingTensors {
                    first: prev.name.clone(),
                    second: t.name.clone(),
                });
            }
        }
        furthest = Some(i);
    }

    Ok(Layout {
        version,
        alignment,
        data_offset,
        metadata,
        tensors,
        index,
    })
}
