//! GGUF v3 writer.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::error::{GgufError, Result};
use super::metadata::Metadata;
use super::reader::{align_up, check_alignment};
use super::types::{Array, LutSizer, TensorType, Value};
use super::{
    DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION, KEY_ALIGNMENT, MAX_ARRAY_DEPTH, MAX_DIMS,
};

struct PendingTensor<'a> {
    name: String,
    dims: Vec<u64>,
    ty: TensorType,
    data: Cow<'a, [u8]>,
}

/// Builds a GGUF v3 file. Tensor data may be borrowed (`&'a [u8]`, e.g. from another
/// file's map) or owned (`Vec<u8>`).
pub struct GgufWriter<'a> {
    metadata: Metadata,
    alignment: u64,
    tensors: Vec<PendingTensor<'a>>,
    names: HashSet<String>,
    lut_sizer: Option<&'a LutSizer>,
}

impl Default for GgufWriter<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> GgufWriter<'a> {
    pub fn new() -> Self {
        GgufWriter {
            metadata: Metadata::default(),
            alignment: DEFAULT_ALIGNMENT,
            tensors: Vec::new(),
            names: HashSet::new(),
            lut_sizer: None,
        }
    }

    /// Lets [`GgufWriter::add_tensor`] check the byte size of TL1/TL2 tensors; without a
    /// sizer their data is written as given.
    pub fn with_lut_sizer(mut self, sizer: &'a LutSizer) -> Self {
        self.lut_sizer = Some(sizer);
        self
    }

    /// Sets the data alignment (a power of two), recorded as `general.alignment` (u32).
    pub fn set_alignment(&mut self, alignment: u64) -> Result<()> {
        let a = check_alignment(alignment)?;
        let v = u32::try_from(a).map_err(|_| GgufError::BadAlignment { value: a })?;
        self.metadata.set(KEY_ALIGNMENT.to_owned(), Value::U32(v));
        self.alignment = a;
        Ok(())
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Adds a metadata pair. Keys must be unique and non-empty. `general.alignment` may
    /// be given here too (any integer type; it is stored as u32).
    pub fn add_kv(&mut self, key: impl Into<String>, value: impl Into<Value>) -> Result<()> {
        let key = key.into();
        let value = value.into();
        if key.is_empty() {
            return Err(GgufError::EmptyKey);
        }
        if self.metadata.get(&key).is_some() {
            return Err(GgufError::DuplicateKey { key });
        }
        if key == KEY_ALIGNMENT {
            let a = value.as_i128().ok_or_else(|| GgufError::WrongType {
                key: key.clone(),
                expected: "an unsigned integer",
                found: value.value_type().name().to_owned(),
            })?;
            return self.set_alignment(u64::try_from(a).unwrap_or(0));
        }
        if let Value::Array(a) = &value {
            if array_depth(a) > MAX_ARRAY_DEPTH {
                return Err(GgufError::ArrayTooDeep {
                    key,
                    max: MAX_ARRAY_DEPTH,
                });
            }
        }
        self.metadata.insert(key, value)
    }

    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Adds a tensor. `dims` are in ggml order (`dims[0]` = row length); `data` must have
    /// exactly the size the type and dims call for (TL1/TL2: checked only with a sizer).
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ty: TensorType,
        data: impl Into<Cow<'a, [u8]>>,
    ) -> Result<()> {
        let name = name.into();
        let data = data.into();
        if name.is_empty() {
            return Err(GgufError::EmptyTensorName);
        }
        if self.names.contains(&name) {
            return Err(GgufError::DuplicateTensor { name });
        }
        if dims.len() > MAX_DIMS as usize {
            return Err(GgufError::TooManyDims {
                tensor: name,
                n_dims: u32::try_from(dims.len()).unwrap_or(u32::MAX),
            });
        }
        let expected =
            ty.byte_size(dims, self.lut_sizer)
                .map_err(|source| GgufError::BadShape {
                    tensor: name.clone(),
                    ty: ty.name().to_owned(),
                    dims: dims.to_vec(),
                    source,
                })?;
        if let Some(expected) = expected {
            if expected != data.len() as u64 {
                return Err(GgufError::WrongTensorSize {
                    tensor: name,
                    expected,
                    got: data.len() as u64,
                });
            }
        }
        self.names.insert(name.clone());
        self.tensors.push(PendingTensor {
            name,
            dims: dims.to_vec(),
            ty,
            data,
        });
        Ok(())
    }

    /// Offsets of the tensors in the data section, in insertion order.
    fn data_offsets(&self) -> Vec<u64> {
        let mut offsets = Vec::with_capacity(self.tensors.len());
        let mut pos = 0u64;
        for t in &self.tensors {
            offsets.push(pos);
            pos = align_up(pos + t.data.len() as u64, self.alignment).expect("in-memory size");
        }
        offsets
    }

    /// Writes the whole file to `w`.
    pub fn write_to<W: Write>(&self, w: W) -> Result<()> {
        self.write_inner(w).map_err(GgufError::Write)
    }

    fn write_inner<W: Write>(&self, w: W) -> io::Result<()> {
        let mut w = Counting { inner: w, pos: 0 };
        w.write_all(&GGUF_MAGIC)?;
        w.write_all(&GGUF_VERSION.to_le_bytes())?;
        w.write_all(&(self.tensors.len() as u64).to_le_bytes())?;
        w.write_all(&(self.metadata.len() as u64).to_le_bytes())?;
        for (key, value) in self.metadata.iter() {
            write_str(&mut w, key)?;
            w.write_all(&value.value_type().id().to_le_bytes())?;
            write_value(&mut w, value)?;
        }
        let offsets = self.data_offsets();
        for (t, off) in self.tensors.iter().zip(&offsets) {
            write_str(&mut w, &t.name)?;
            w.write_all(&(t.dims.len() as u32).to_le_bytes())?;
            for d in &t.dims {
                w.write_all(&d.to_le_bytes())?;
            }
            w.write_all(&t.ty.id().to_le_bytes())?;
            w.write_all(&off.to_le_bytes())?;
        }
        w.pad_to(self.alignment)?;
        for t in &self.tensors {
            w.write_all(&t.data)?;
            w.pad_to(self.alignment)?;
        }
        w.inner.flush()
    }

    /// The whole file as bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.write_to(&mut v)?;
        Ok(v)
    }

    /// Writes the file atomically: a temporary file in the target's directory is written,
    /// fsynced and renamed over `path`; the directory is then fsynced. On failure the
    /// target is untouched and the temporary file removed.
    pub fn write_to_path(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let io_err = |p: &Path| {
            let p = p.to_owned();
            move |source| GgufError::Io { path: p, source }
        };
        let file_name = path.file_name().ok_or_else(|| GgufError::Io {
            path: path.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"),
        })?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let (tmp, file) = create_temp(&dir, &file_name.to_string_lossy())?;
        let result = (|| {
            let mut bw = BufWriter::new(file);
            self.write_to(&mut bw)?;
            let file = bw
                .into_inner()
                .map_err(|e| GgufError::Write(e.into_error()))?;
            file.sync_all().map_err(io_err(&tmp))?;
            drop(file);
            fs::rename(&tmp, path).map_err(io_err(path))
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        sync_dir(&dir).map_err(io_err(&dir))
    }
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn create_temp(dir: &Path, name: &str) -> Result<(PathBuf, File)> {
    loop {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.tmp-{}-{n}", std::process::id()));
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < u64::MAX => continue,
            Err(source) => return Err(GgufError::Io { path: tmp, source }),
        }
    }
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

fn array_depth(a: &Array) -> u32 {
    match a {
        Array::Array(v) => 1 + v.iter().map(array_depth).max().unwrap_or(0),
        _ => 1,
    }
}

struct Counting<W> {
    inner: W,
    pos: u64,
}

impl<W: Write> Counting<W> {
    fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        self.inner.write_all(b)?;
        self.pos += b.len() as u64;
        Ok(())
    }

    fn pad_to(&mut self, align: u64) -> io::Result<()> {
        const ZEROS: [u8; 64] = [0; 64];
        let mut pad = align_up(self.pos, align).expect("in-memory size") - self.pos;
        while pad > 0 {
            let n = pad.min(ZEROS.len() as u64);
            self.write_all(&ZEROS[..n as usize])?;
            pad -= n;
        }
        Ok(())
    }
}

fn write_str<W: Write>(w: &mut Counting<W>, s: &str) -> io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn write_value<W: Write>(w: &mut Counting<W>, v: &Value) -> io::Result<()> {
    match v {
        Value::U8(x) => w.write_all(&x.to_le_bytes()),
        Value::I8(x) => w.write_all(&x.to_le_bytes()),
        Value::U16(x) => w.write_all(&x.to_le_bytes()),
        Value::I16(x) => w.write_all(&x.to_le_bytes()),
        Value::U32(x) => w.write_all(&x.to_le_bytes()),
        Value::I32(x) => w.write_all(&x.to_le_bytes()),
        Value::F32(x) => w.write_all(&x.to_le_bytes()),
        Value::Bool(x) => w.write_all(&[u8::from(*x)]),
        Value::String(s) => write_str(w, s),
        Value::Array(a) => write_array(w, a),
        Value::U64(x) => w.write_all(&x.to_le_bytes()),
        Value::I64(x) => w.write_all(&x.to_le_bytes()),
        Value::F64(x) => w.write_all(&x.to_le_bytes()),
    }
}

fn write_array<W: Write>(w: &mut Counting<W>, a: &Array) -> io::Result<()> {
    w.write_all(&a.element_type().id().to_le_bytes())?;
    w.write_all(&(a.len() as u64).to_le_bytes())?;
    macro_rules! each {
        ($v:expr) => {{
            for x in $v {
                w.write_all(&x.to_le_bytes())?;
            }
            Ok(())
        }};
    }
    match a {
        Array::U8(v) => w.write_all(v),
        Array::I8(v) => each!(v),
        Array::U16(v) => each!(v),
        Array::I16(v) => each!(v),
        Array::U32(v) => each!(v),
        Array::I32(v) => each!(v),
        Array::F32(v) => each!(v),
        Array::Bool(v) => {
            for &b in v {
                w.write_all(&[u8::from(b)])?;
            }
            Ok(())
        }
        Array::String(v) => {
            for s in v {
                write_str(w, s)?;
            }
            Ok(())
        }
        Array::Array(v) => {
            for inner in v {
                write_array(w, inner)?;
            }
            Ok(())
        }
        Array::U64(v) => each!(v),
        Array::I64(v) => each!(v),
        Array::F64(v) => each!(v),
    }
}
