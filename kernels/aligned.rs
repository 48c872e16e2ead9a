//! Byte buffers whose start is aligned to a cache line (64 bytes).
//!
//! The AVX-512 kernels load 64 bytes at a time; a tensor that starts 16 or 32 bytes past a
//! line boundary makes every such load span two lines (measured on an Emerald Rapids Xeon:
//! L2-resident I2S GEMV 17-20 GB/s instead of 26 GB/s). GGUF files written by ternforge use
//! 64-byte alignment and are memory-mapped at a page boundary; models built in memory, the
//! benchmarks' weight copies and the prepared activations live in these buffers.

mod sealed {
    pub trait Byte: Copy + Default + 'static {}
    impl Byte for u8 {}
    impl Byte for i8 {}
}

/// One cache line of storage.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// `len` bytes (`u8` or `i8`) starting on a 64-byte boundary; dereferences to a slice.
#[derive(Clone)]
pub struct Aligned<T: sealed::Byte> {
    lines: Vec<Line>,
    len: usize,
    _t: std::marker::PhantomData<T>,
}

/// Cache-line aligned `u8` bytes.
pub type AlignedBytes = Aligned<u8>;
/// Cache-line aligned `i8` values.
pub type AlignedI8 = Aligned<i8>;

impl<T: sealed::Byte> Aligned<T> {
    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> Self {
        Aligned {
            lines: vec![Line([0; 64]); len.div_ceil(64)],
            len,
            _t: std::marker::PhantomData,
        }
    }

    /// A copy of `src`.
    pub fn copy_from(src: &[T]) -> Self {
        let mut a = Self::zeroed(src.len());
        a.copy_from_slice(src);
        a
    }
}

impl<T: sealed::Byte> Default for Aligned<T> {
    fn default() -> Self {
        Self::zeroed(0)
    }
}

impl<T: sealed::Byte> std::ops::Deref for Aligned<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `lines` holds `len.div_ceil(64) * 64 >= len` initialised bytes (a `Line` is
        // a plain `[u8; 64]`, `repr(C)`, no padding), contiguous, living as long as `self`;
        // `T` is `u8` or `i8` (sealed): one byte, alignment 1, every bit pattern valid.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const T, self.len) }
    }
}

impl<T: sealed::Byte> std::ops::DerefMut for Aligned<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut T, self.len) }
    }
}

impl<T: sealed::Byte> std::fmt::Debug for Aligned<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Aligned({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::{AlignedBytes, AlignedI8};

    #[test]
    fn aligned_copy_of_every_length() {
        for len in [0usize, 1, 63, 64, 65, 1000] {
            let src: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let a = AlignedBytes::copy_from(&src);
            assert_eq!(&a[..], &src[..]);
            assert_eq!(a.as_ptr() as usize % 64, 0);
            let mut z = AlignedI8::zeroed(len);
            assert!(z.iter().all(|&v| v == 0));
            z.iter_mut().for_each(|v| *v = -3);
            assert_eq!(z.len(), len);
            assert!(z.iter().all(|&v| v == -3));
        }
    }
}
