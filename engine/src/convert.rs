//! Model conversion: f32/f16 GGUF weights (absmean ternarisation, as BitNet b1.58 trains) or
//! any ternary format → any ternary format. Everything else is copied unchanged.

use crate::gguf::{GgmlType, Gguf, GgufError, GgufWriter, TensorType};
use crate::model::parse_options;
use std::borrow::Cow;
use ternforge::{reference, Format, PackedWeights};

/// Names of the ternary projections of a BitNet block (`blk.N.<name>`).
pub const PROJECTIONS: [&str; 7] = [
    "attn_q.weight",
    "attn_k.weight",
    "attn_v.weight",
    "attn_output.weight",
    "ffn_gate.weight",
    "ffn_up.weight",
    "ffn_down.weight",
];

/// Absmean ternarisation (BitNet b1.58): `s = mean|w|`, `w_t = s * round(clamp(w / s, -1, 1))`.
pub fn absmean_ternarize(w: &[f32]) -> Vec<f32> {
    let s = (w.iter().map(|v| v.abs() as f64).sum::<f64>() / w.len().max(1) as f64) as f32;
    if s == 0.0 || !s.is_finite() {
        return vec![0.0; w.len()];
    }
    // keep the scale f16-representable so block formats store it exactly
    let s = half::f16::from_f32(s).to_f32();
    w.iter()
        .map(|&v| (v / s).clamp(-1.0, 1.0).round() * s)
        .collect()
}

fn is_projection(name: &str) -> bool {
    name.starts_with("blk.") && PROJECTIONS.iter().any(|p| name.ends_with(p))
}

fn tensor_type(f: Format) -> Result<TensorType, String> {
    match f {
        Format::TL1 => Ok(TensorType::TL1),
        Format::TL2 => Ok(TensorType::TL2),
        f => f
            .ggml_type()
            .and_then(TensorType::from_id)
            .ok_or_else(|| format!("{} has no GGUF tensor type", f.name())),
    }
}

/// Convert GGUF bytes: every projection into `target`, progress reported as
/// `(done, total, tensor name)`.
pub fn convert(
    input: &[u8],
    target: Format,
    mut progress: impl FnMut(usize, usize, &str),
) -> Result<Vec<u8>, String> {
    let g = Gguf::parse_with(input, parse_options()).map_err(|e| e.to_string())?;
    let sizer = parse_options().lut_sizer.expect("LUT sizer");
    let mut w = GgufWriter::new().with_lut_sizer(sizer);
    // at least cache-line alignment for the converted tensors (see ternforge::AlignedBytes)
    w.set_alignment(g.alignment().max(64))
        .map_err(|e| e.to_string())?;
    for (k, v) in g
        .metadata()
        .iter()
        .filter(|(k, _)| *k != "general.alignment")
    {
        w.add_kv(k, v.clone())
            .map_err(|e: GgufError| e.to_string())?;
    }
    if target.spec().is_lut() {
        w.add_kv("ternforge.lut.tile_rows", target.spec().tile_rows() as u32)
            .map_err(|e| e.to_string())?;
    }
    let views: Vec<_> = g.tensors().collect();
    let total = views.len();
    for (i, t) in views.into_iter().enumerate() {
        progress(i, total, t.name);
        if !is_projection(t.name) {
            w.add_tensor(t.name, t.dims, t.ty, Cow::Borrowed(t.data))
                .map_err(|e| e.to_string())?;
            continue;
        }
        if t.dims.len() != 2 {
            return Err(format!(
                "tensor {}: projection with dims {:?}",
                t.name, t.dims
            ));
        }
        let (k, n) = (t.dims[0] as usize, t.dims[1] as usize);
        let values: Vec<f32> = match t.ty {
            TensorType::Known(GgmlType::F32) => absmean_ternarize(
                &t.data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect::<Vec<_>>(),
            ),
            TensorType::Known(GgmlType::F16) => absmean_ternarize(
                &t.data
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect::<Vec<_>>(),
            ),
            ty => {
                let f = Format::from_ggml_type(ty.id()).ok_or_else(|| {
                    format!("tensor {}: type {} cannot be converted", t.name, ty.name())
                })?;
                let bytes = f
                    .tensor_bytes(n, k)
                    .map_err(|e| format!("tensor {}: {e}", t.name))?;
                let data = t
                    .data
                    .get(..bytes)
                    .ok_or_else(|| format!("tensor {}: truncated", t.name))?;
                let pw = PackedWeights::new(f, data, n, k)
                    .map_err(|e| format!("tensor {}: {e}", t.name))?;
                reference::dequantize(f.spec(), pw.data(), n, k)
            }
        };
        let packed = ternforge::quantize(target, &values, n, k)
            .map_err(|e| format!("tensor {}: {e}", t.name))?;
        w.add_tensor(t.name, t.dims, tensor_type(target)?, packed)
            .map_err(|e| e.to_string())?;
    }
    progress(total, total, "");
    w.to_bytes().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absmean_matches_the_bitnet_rule() {
        let w = [0.3f32, -0.1, 0.05, -0.6, 0.0, 0.2];
        let t = absmean_ternarize(&w);
        let s = half::f16::from_f32(1.25 / 6.0).to_f32();
        let want: Vec<f32> = w
            .iter()
            .map(|v| (v / s).clamp(-1.0, 1.0).round() * s)
            .collect();
        assert_eq!(t, want);
        assert!(t.iter().all(|v| *v == 0.0 || v.abs() == s));
        assert_eq!(absmean_ternarize(&[0.0; 4]), vec![0.0; 4]);
    }
}
