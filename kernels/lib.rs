//! ternforge kernels.
