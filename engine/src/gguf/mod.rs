//! GGUF v3 (and v2) reader and writer.
//!
//! Reading: [`Gguf::open`] memory-maps a file, [`Gguf::parse`] reads any byte buffer.
//! Metadata is decoded into [`Value`]s; tensors are zero-copy [`TensorView`]s whose `data`
//! borrows the file. Every malformed input yields a [`GgufError`], never a panic, and no
//! allocation is sized by a count before that count has been checked against the bytes
//! that remain.
//!
//! Writing: [`GgufWriter`] collects metadata and tensors and writes them with correct
//! alignment padding; [`GgufWriter::write_to_path`] replaces the target atomically.
//!
//! Layout (little-endian): `"GGUF"`, version u32, tensor count u64, kv count u64, the kv
//! pairs (key string, value type u32, value), the tensor infos (name string, n_dims u32,
//! dims u64 x n_dims, type u32, offset u64 relative to the data section), padding to the
//! alignment, then the data section. Strings are a u64 length and UTF-8 bytes.

mod error;
mod metadata;
mod reader;
mod types;
mod writer;

pub use error::{GgufError, Result};
pub use metadata::Metadata;
pub use reader::{Gguf, GgufFile, ParseOptions, TensorInfo, TensorView};
pub use types::{
    element_count, Array, GgmlType, LutFormat, LutSizer, SizeError, TensorType, Value, ValueType,
    I2S_BLOCK, I2S_TAIL_BYTES, TL1_TYPE_ID, TL2_TYPE_ID,
};
pub use writer::GgufWriter;

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// The version the writer produces.
pub const GGUF_VERSION: u32 = 3;
/// Alignment used when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Largest accepted `general.alignment`.
pub const MAX_ALIGNMENT: u64 = 1 << 30;
/// Most tensor dimensions ggml supports.
pub const MAX_DIMS: u32 = 4;
/// Deepest accepted array nesting (an array of arrays is depth 2).
pub const MAX_ARRAY_DEPTH: u32 = 16;
/// Metadata key holding the data alignment.
pub const KEY_ALIGNMENT: &str = "general.alignment";
