//! Metadata key/value store with typed getters.

use std::collections::HashMap;

use super::error::{GgufError, Result};
use super::types::{Array, Value};

/// Metadata entries in file order, indexed by key.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metadata {
    entries: Vec<(String, Value)>,
    index: HashMap<String, usize>,
}

impl Metadata {
    /// Adds an entry; a key already present is an error.
    pub fn insert(&mut self, key: String, value: Value) -> Result<()> {
        if self.index.contains_key(&key) {
            return Err(GgufError::DuplicateKey { key });
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push((key, value));
        Ok(())
    }

    /// Sets an entry, replacing the value of a key already present (keeping its position).
    pub fn set(&mut self, key: String, value: Value) {
        match self.index.get(&key) {
            Some(&i) => self.entries[i].1 = value,
            None => {
                self.index.insert(key.clone(), self.entries.len());
                self.entries.push((key, value));
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> + '_ {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    fn require(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| GgufError::KeyNotFound {
            key: key.to_owned(),
        })
    }

    fn wrong(key: &str, expected: &'static str, found: &Value) -> GgufError {
        let found = match found {
            Value::Array(a) => format!("array of {}", a.element_type().name()),
            v => v.value_type().name().to_owned(),
        };
        GgufError::WrongType {
            key: key.to_owned(),
            expected,
            found,
        }
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.require(key)? {
            Value::String(s) => Ok(s),
            v => Err(Self::wrong(key, "string", v)),
        }
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        match self.require(key)? {
            Value::Bool(b) => Ok(*b),
            v => Err(Self::wrong(key, "bool", v)),
        }
    }

    fn get_int<T: TryFrom<i128>>(&self, key: &str, target: &'static str) -> Result<T> {
        let v = self.require(key)?;
        let i = v.as_i128().ok_or_else(|| Self::wrong(key, "integer", v))?;
        T::try_from(i).map_err(|_| GgufError::OutOfRange {
            key: key.to_owned(),
            value: i.to_string(),
            target,
        })
    }

    /// Any integer type whose value fits in u32.
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        self.get_int(key, "u32")
    }

    /// Any integer type whose value fits in u64.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get_int(key, "u64")
    }

    /// Any integer type whose value fits in i64.
    pub fn get_i64(&self, key: &str) -> Result<i64> {
        self.get_int(key, "i64")
    }

    /// An f32 or f64 value, or an integer exactly representable in f32 (|v| <= 2^24).
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        match self.require(key)? {
            Value::F32(x) => Ok(*x),
            Value::F64(x) => Ok(*x as f32),
            v => match v.as_i128() {
                Some(i) if i.unsigned_abs() <= 1 << 24 => Ok(i as f32),
                Some(i) => Err(GgufError::OutOfRange {
                    key: key.to_owned(),
                    value: i.to_string(),
                    target: "f32 (exactly)",
                }),
                None => Err(Self::wrong(key, "float", v)),
            },
        }
    }

    pub fn get_array(&self, key: &str) -> Result<&Array> {
        match self.require(key)? {
            Value::Array(a) => Ok(a),
            v => Err(Self::wrong(key, "array", v)),
        }
    }

    pub fn get_str_array(&self, key: &str) -> Result<&[String]> {
        match self.require(key)? {
            Value::Array(Array::String(v)) => Ok(v),
            v => Err(Self::wrong(key, "array of string", v)),
        }
    }

    pub fn get_i32_array(&self, key: &str) -> Result<&[i32]> {
        match self.require(key)? {
            Value::Array(Array::I32(v)) => Ok(v),
            v => Err(Self::wrong(key, "array of i32", v)),
        }
    }

    pub fn get_f32_array(&self, key: &str) -> Result<&[f32]> {
        match self.require(key)? {
            Value::Array(Array::F32(v)) => Ok(v),
            v => Err(Self::wrong(key, "array of f32", v)),
        }
    }
}
