//! ternforge inference engine.

pub mod chat;
pub mod gguf;
pub mod tokenizer;
