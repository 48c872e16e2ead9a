//! ternforge kernel table and code generator.
