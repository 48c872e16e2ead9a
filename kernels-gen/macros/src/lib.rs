//! ternforge proc-macros.
