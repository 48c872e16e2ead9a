//! ternforge inference engine.

pub mod gguf;
