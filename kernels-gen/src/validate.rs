//! Build-time validation of the table. `build.rs` fails with these messages, naming the row.

use crate::table::{CodeRule, FormatSpec, Isa, Quantizer, Row, ScaleRule};

fn check_format(f: &FormatSpec) -> Result<(), String> {
    let err = |m: String| Err(format!("table: format {}: {m}", f.ident));
    if f.name.is_empty()
        || !f
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return err(format!("name {:?} must be lowercase [a-z0-9_]", f.name));
    }
    if !f
        .ident
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return err(format!("ident {:?} is not a Rust identifier", f.ident));
    }
    if f.quantizer == Quantizer::RoundAbsMax && f.scale != ScaleRule::BlockF16 {
        return err("RoundAbsMax stores one scale per block and needs ScaleRule::BlockF16".into());
    }
    match f.codes {
        CodeRule::Packed2 { group_bytes, .. } => {
            if f.block_code_bytes * 4 != f.block_elems {
                return err(format!(
                    "Packed2 needs block_code_bytes * 4 == block_elems ({} * 4 != {})",
                    f.block_code_bytes, f.block_elems
                ));
            }
            if group_bytes == 0
                || !group_bytes.is_power_of_two()
                || !f.block_code_bytes.is_multiple_of(group_bytes)
            {
                return err(format!(
                    "group_bytes {group_bytes} must be a power of two dividing block_code_bytes {}",
                    f.block_code_bytes
                ));
            }
            if f.block_code_bytes > 64 * 1024 {
                return err("blocks over 64 KiB are not supported".into());
            }
        }
        CodeRule::Base3 => {
            if f.block_elems != 256 || f.block_code_bytes != 52 {
                return err("Base3 is ggml TQ1_0: 256 elements in 52 code bytes".into());
            }
        }
        CodeRule::PairLut { tile_rows } | CodeRule::TripleLut { tile_rows } => {
            if tile_rows == 0 || tile_rows % 16 != 0 || tile_rows > 256 {
                return err(format!(
                    "tile_rows {tile_rows} must be a multiple of 16 up to 256"
                ));
            }
            if !matches!(f.scale, ScaleRule::TensorTail { tail_bytes } if tail_bytes >= 4) {
                return err("LUT formats carry one f32 tensor scale in a tail".into());
            }
        }
    }
    if let ScaleRule::TensorTail { tail_bytes } = f.scale {
        if tail_bytes < 4 {
            return err("a tensor tail must hold at least the 4-byte f32 scale".into());
        }
    }
    Ok(())
}

/// Validate every row; the first problem found is returned.
pub fn validate(table: &[Row]) -> Result<(), String> {
    let mut formats: Vec<&FormatSpec> = Vec::new();
    for (i, row) in table.iter().enumerate() {
        let f = row.format;
        let here = format!("table row {i} ({} on {})", f.ident, row.isa.name());
        if let Some(other) = formats
            .iter()
            .find(|o| o.name == f.name || o.ident == f.ident)
        {
            if *other != f {
                return Err(format!("{here}: two different formats named {}", f.name));
            }
        } else {
            if let Some(t) = f.ggml_type {
                if let Some(o) = formats.iter().find(|o| o.ggml_type == Some(t)) {
                    return Err(format!("{here}: ggml type {t} already used by {}", o.ident));
                }
            }
            check_format(f)?;
            formats.push(f);
        }
        if table[..i]
            .iter()
            .any(|r| r.format.name == f.name && r.isa == row.isa)
        {
            return Err(format!(
                "{here}: duplicate (format, isa) row; list every tile in one row"
            ));
        }
        if row.tiles.is_empty() {
            return Err(format!("{here}: no matmul tiles"));
        }
        for (j, t) in row.tiles.iter().enumerate() {
            if row.tiles[..j].contains(t) {
                return Err(format!("{here}: tile {}x{} listed twice", t.rows, t.cols));
            }
            if t.rows == 0 || t.cols == 0 {
                return Err(format!("{here}: empty tile {}x{}", t.rows, t.cols));
            }
            if t.panel {
                // panel tiles: 16 weight rows per zmm, `rows / 16 * cols` i32 accumulators
                // (plus as many f32 ones for block scales) and the weight vectors in 32 zmm
                // zmm (16 rows per vector, 32 registers) or ymm (8 rows, 16 registers)
                let (lanes, regs) = match row.isa {
                    Isa::Avx512Vnni => (16, 30),
                    Isa::Avx2 if !f.is_lut() => (8, 14),
                    _ => {
                        return Err(format!(
                            "{here}: panel tiles exist on avx512vnni (every format) and avx2 (block formats) only"
                        ))
                    }
                };
                if f.is_lut() && t.rows != f.tile_rows() {
                    return Err(format!(
                        "{here}: a LUT panel tile covers one layout tile ({} rows), got {}",
                        f.tile_rows(),
                        t.rows
                    ));
                }
                if !t.rows.is_multiple_of(lanes)
                    || t.rows > 4 * lanes
                    || t.cols > 16
                    || (t.rows / lanes) * (t.cols + 1) > regs
                {
                    return Err(format!(
                        "{here}: panel tile {}x{} must have 1-4 vectors of {lanes} rows and fit {regs} registers (rows / {lanes} * (cols + 1))",
                        t.rows, t.cols
                    ));
                }
            } else if f.is_lut() {
                if t.rows != f.tile_rows() || t.cols > 8 {
                    return Err(format!(
                        "{here}: LUT tiles cover one layout tile ({} rows) and at most 8 columns, got {}x{}",
                        f.tile_rows(),
                        t.rows,
                        t.cols
                    ));
                }
            } else if t.rows * t.cols > 16 || t.rows > 8 {
                return Err(format!(
                    "{here}: tile {}x{} needs more than 16 accumulators (or over 8 rows)",
                    t.rows, t.cols
                ));
            }
        }
    }
    Ok(())
}
