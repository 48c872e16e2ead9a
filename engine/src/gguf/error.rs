//! Typed errors of the GGUF reader and writer.

use std::path::PathBuf;

use super::types::SizeError;

/// Everything that can go wrong reading or writing GGUF. Every variant raised by the
/// parser names the key or tensor it concerns where there is one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("write failed: {0}")]
    Write(#[source] std::io::Error),
    #[error("not a GGUF file: magic is {found:02x?}, expected \"GGUF\"")]
    BadMagic { found: [u8; 4] },
    #[error("unsupported GGUF version {version} (supported: 2, 3; a big-endian file reads as a huge version)")]
    UnsupportedVersion { version: u32 },
    #[error(
        "truncated file: {what} needs {needed} bytes at offset {offset}, only {available} left"
    )]
    Truncated {
        what: String,
        offset: u64,
        needed: u64,
        available: u64,
    },
    #[error("{what}: count {count} cannot fit in the {available} bytes left (each needs at least {min_each})")]
    CountTooLarge {
        what: String,
        count: u64,
        min_each: u64,
        available: u64,
    },
    #[error("{what}: length {len} exceeds the {available} bytes left")]
    StringTooLong {
        what: String,
        len: u64,
        available: u64,
    },
    #[error("{what}: string is not valid UTF-8")]
    InvalidUtf8 { what: String },
    #[error("key {key:?}: bool byte is {byte}, must be 0 or 1")]
    InvalidBool { key: String, byte: u8 },
    #[error("key {key:?}: unknown metadata value type {type_id}")]
    UnknownValueType { key: String, type_id: u32 },
    #[error("key {key:?}: arrays nested deeper than {max}")]
    ArrayTooDeep { key: String, max: u32 },
    #[error("duplicate metadata key {key:?}")]
    DuplicateKey { key: String },
    #[error("empty metadata key")]
    EmptyKey,
    #[error("empty tensor name")]
    EmptyTensorName,
    #[error("general.alignment = {value}: must be a power of two between 1 and 2^30")]
    BadAlignment { value: u64 },
    #[error("duplicate tensor name {name:?}")]
    DuplicateTensor { name: String },
    #[error("tensor {tensor:?}: {n_dims} dimensions, at most 4 allowed")]
    TooManyDims { tensor: String, n_dims: u32 },
    #[error("tensor {tensor:?}: unknown tensor type id {type_id}")]
    UnknownTensorType { tensor: String, type_id: u32 },
    #[error("tensor {tensor:?} ({ty}, dims {dims:?}): {source}")]
    BadShape {
        tensor: String,
        ty: String,
        dims: Vec<u64>,
        #[source]
        source: SizeError,
    },
    #[error("tensor {tensor:?}: offset {offset} is not a multiple of the alignment {alignment}")]
    MisalignedOffset {
        tensor: String,
        offset: u64,
        alignment: u64,
    },
    #[error("tensor {tensor:?}: bytes {offset}..{offset}+{size} of the data section run past its end ({data_len} bytes)")]
    TensorOutOfBounds {
        tensor: String,
        offset: u64,
        size: u64,
        data_len: u64,
    },
    #[error("tensors {first:?} and {second:?} overlap")]
    OverlappingTensors { first: String, second: String },
    #[error("tensor {tensor:?}: {got} bytes given, {expected} expected for its type and dims")]
    WrongTensorSize {
        tensor: String,
        expected: u64,
        got: u64,
    },
    #[error("metadata key {key:?} not found")]
    KeyNotFound { key: String },
    #[error("metadata key {key:?} is {found}, expected {expected}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("metadata key {key:?}: value {value} does not fit in {target}")]
    OutOfRange {
        key: String,
        value: String,
        target: &'static str,
    },
}

pub type Result<T, E = GgufError> = std::result::Result<T, E>;
