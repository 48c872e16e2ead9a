//! ternforge inference engine.

pub mod chat;
pub mod tokenizer;
