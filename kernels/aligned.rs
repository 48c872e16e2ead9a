//! A byte buffer whose start is aligned to a cache line (64 bytes).
//!
//! The AVX-512 kernels load 64 bytes at a time; a tensor that starts 16 or 32 bytes past a
//! line boundary makes every such load span two lines (measured on an Emerald Rapids Xeon:
//! L2-resident I2S GEMV 17-20 GB/s instead of 26 GB/s). GGUF files written by ternforge use
//! 64-byte alignment and are memory-mapped at a page boundary; models built in memory and
//! the benchmarks' weight copies live in this buffer.

/// One cache line of storage.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Bytes starting on a 64-byte boundary (dereferences to `[u8]`).
#[derive(Clone)]
pub struct AlignedBytes {
    lines: Vec<Line>,
    len: usize,
}

impl AlignedBytes {
    /// A copy of `bytes`.
    pub fn copy_from(bytes: &[u8]) -> Self {
        let mut lines = vec![Line([0; 64]); bytes.len().div_ceil(64)];
        for (l, c) in lines.iter_mut().zip(bytes.chunks(64)) {
            l.0[..c.len()].copy_from_slice(c);
        }
        AlignedBytes {
            lines,
            len: bytes.len(),
        }
    }
}

impl std::ops::Deref for AlignedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `lines` holds `len.div_ceil(64) * 64 >= len` initialised bytes (a `Line` is
        // a plain `[u8; 64]`, `repr(C)`, no padding), contiguous, and lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const u8, self.len) }
    }
}

impl std::fmt::Debug for AlignedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBytes({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::AlignedBytes;

    #[test]
    fn aligned_copy_of_every_length() {
        for len in [0usize, 1, 63, 64, 65, 1000] {
            let src: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let a = AlignedBytes::copy_from(&src);
            assert_eq!(&a[..], &src[..]);
            assert_eq!(a.as_ptr() as usize % 64, 0);
        }
    }
}
