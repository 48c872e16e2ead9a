//! ternforge inference engine: GGUF, tokenizer, the BitNet b1.58 forward pass on the
//! generated kernels, sampling and generation.

pub mod chat;
pub mod convert;
pub mod forward;
pub mod generate;
pub mod gguf;
pub mod kv;
pub mod lm_head;
pub mod model;
pub mod sample;
pub mod synth;
pub mod tokenizer;
