//! ternforge inference engine.
