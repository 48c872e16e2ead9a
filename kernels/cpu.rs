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

/// Whether this is an AMD x86 CPU (CPUID vendor `AuthenticAMD`; detected once). Dispatch
/// uses it for the GEMV tile height ([`crate::table::AMD_GEMV_ROWS`]).
pub fn is_amd() -> bool {
    static AMD: OnceLock<bool> = OnceLock::new();
    *AMD.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: CPUID leaf 0 exists on every x86-64 CPU and only reads identification
            // registers (the intrinsic is safe in newer compilers, hence the allow).
            #[allow(unused_unsafe)]
            let r = unsafe { core::arch::x86_64::__cpuid(0) };
            // the vendor string is EBX, EDX, ECX: "Auth" "enti" "cAMD"
            (r.ebx, r.edx, r.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// CPU features relevant to ternforge, as names (for receipts and `ternforge kernels`).
pub fn feature_names() -> Vec<&'static str> {
    Isa::ALL
        .into_iter()
        .filter(|&i| i != Isa::Scalar && supports(i))
        .map(|i| i.name())
        .collect()
}
