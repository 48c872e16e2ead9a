//! CPU feature detection (done once, cached).

use crate::table::Isa;
use std::sync::OnceLock;

/// Whether this CPU can execute code of `isa`.
pub fn supports(isa: Isa) -> bool {
    static CACHE: OnceLock<[bool; 6]> = OnceLock::new();
    let c = CACHE.get_or_init(|| Isa::ALL.map(detect));
    c[Isa::ALL.iter().position(|&i| i == isa).unwrap_or(0)]
}

fn detect(isa: Isa) -> bool {
    match isa {
        Isa::Scalar => true,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            detect(Isa::Avx2)
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => detect(Isa::Avx512) && is_x86_feature_detected!("avx512vnni"),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
        #[cfg(target_arch = "aarch64")]
        Isa::NeonDot => {
            std::arch::is_aarch64_feature_detected!("neon")
                && std::arch::is_aarch64_feature_detected!("dotprod")
        }
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

/// CPU features relevant to ternforge, as names (for receipts and `ternforge kernels`).
pub fn feature_names() -> Vec<&'static str> {
    Isa::ALL
        .into_iter()
        .filter(|&i| i != Isa::Scalar && supports(i))
        .map(|i| i.name())
        .collect()
}
