//! Dispatch's GEMV tile choice: the table row's first GEMV tile, or the tile of the preferred
//! height (AMD CPUs, `table::AMD_GEMV_ROWS`) where the row lists one. Batches are unaffected.

use ternforge::table::AMD_GEMV_ROWS;
use ternforge::{cpu, Dispatch, Format, Isa, KernelOp, Tile};

fn pick(d: &Dispatch, f: Format, m: usize) -> &'static str {
    d.select(f, KernelOp::Matmul(Tile::new(1, 1)), m)
        .unwrap()
        .id
}

#[test]
fn gemv_tile_height_preference() {
    // the scalar I2S row lists GEMV1 before GEMV4, and no 2-row tile (so this runs anywhere)
    let mut d = Dispatch::with_isa(Isa::Scalar).unwrap();
    d.gemv_rows = None;
    assert_eq!(pick(&d, Format::I2S, 1), "i2s.scalar.mm1x1");
    let batch = pick(&d, Format::I2S, 64);
    d.gemv_rows = Some(4);
    assert_eq!(pick(&d, Format::I2S, 1), "i2s.scalar.mm4x1");
    assert_eq!(
        pick(&d, Format::I2S, 64),
        batch,
        "a batch ignores the GEMV preference"
    );
    // a height the row does not list: its first GEMV tile
    d.gemv_rows = Some(3);
    assert_eq!(pick(&d, Format::I2S, 1), "i2s.scalar.mm1x1");
}

#[test]
fn detected_preference_follows_the_vendor() {
    let d = Dispatch::detect();
    assert_eq!(d.gemv_rows, cpu::is_amd().then_some(AMD_GEMV_ROWS));
    #[cfg(target_arch = "x86_64")]
    if d.isa == Isa::Avx512Vnni {
        // the I2S VNNI row lists GEMV4, GEMV2, GEMV1
        let want = if cpu::is_amd() {
            "i2s.avx512vnni.mm2x1"
        } else {
            "i2s.avx512vnni.mm4x1"
        };
        assert_eq!(pick(&d, Format::I2S, 1), want);
    }
}
