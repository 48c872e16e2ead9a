//! The engine's forward pass against an independent f64 reference, and the same synthetic
//! model in every format giving the same greedy tokens.

use ternforge::{reference, Format};
use ternforge_engine::forward::{ForwardError, Session};
use ternforge_engine::generate::{generate, FinishReason, GenerateParams};
use ternforge_engine::gguf::Gguf;
use ternforge_engine::kv::KvType;
use ternforge_engine::model::{self, Model};
use ternforge_engine::sample::SamplerConfig;
use ternforge_engine::synth::{synthesize, Shape};
use ternforge_engine::tokenizer::{Tokenizer, TokenizerConfig};

const FORMATS: [Format; 5] = [
    Format::I2S,
    Format::QK256,
    Format::TQ1_0,
    Format::TL1,
    Format::TL2,
];

fn load(bytes: &[u8]) -> Gguf<&[u8]> {
    Gguf::parse_with(bytes, model::parse_options()).expect("parse synthesized model")
}

fn tokenizer<D: AsRef<[u8]>>(g: &Gguf<D>) -> Tokenizer {
    let cfg = TokenizerConfig {
        model: g.get_str("tokenizer.ggml.model").unwrap().into(),
        pre: Some(g.get_str("tokenizer.ggml.pre").unwrap().into()),
        tokens: g.get_str_array("tokenizer.ggml.tokens").unwrap().to_vec(),
        merges: g.get_str_array("tokenizer.ggml.merges").unwrap().to_vec(),
        token_types: Some(
            g.get_i32_array("tokenizer.ggml.token_type")
                .unwrap()
                .to_vec(),
        ),
        bos_token_id: Some(g.get_u32("tokenizer.ggml.bos_token_id").unwrap()),
        eos_token_id: Some(g.get_u32("tokenizer.ggml.eos_token_id").unwrap()),
        eot_token_id: Some(g.get_u32("tokenizer.ggml.eot_token_id").unwrap()),
        ..Default::default()
    };
    Tokenizer::from_config(&cfg).expect("tokenizer")
}

/// Straightforward f64 forward pass over dequantized ternary weights with the same int8
/// per-token activation quantization as the kernels, and K and V stored at the cache's
/// precision (`kv`: rounded to f16, or to f32, as the engine's cache holds them).
fn reference_logits(m: &Model<'_>, tokens: &[u32], kv: KvType) -> Vec<f64> {
    let c = &m.cfg;
    let (d, hd, nh, nkv) = (c.n_embd, c.head_dim, c.n_head, c.n_head_kv);
    let _kvd = nkv * hd;
    let dense = |l: &ternforge_engine::model::Linear<'_>| -> (Vec<f64>, usize, usize) {
        let w = l.w;
        let v = reference::dequantize(w.format().spec(), w.data(), w.n(), w.k());
        (v.into_iter().map(f64::from).collect(), w.n(), w.k())
    };
    let matmul = |x: &[f64], (w, n, k): &(Vec<f64>, usize, usize)| -> Vec<f64> {
        // int8 per-token activations, as the kernels see them
        let amax = x.iter().fold(0f64, |a, v| a.max(v.abs()));
        let s = 127.0 / amax.max(1e-5);
        let q: Vec<f64> = x
            .iter()
            .map(|v| (v * s).round_ties_even().clamp(-128.0, 127.0))
            .collect();
        (0..*n)
            .map(|r| (0..*k).map(|i| w[r * k + i] * q[i]).sum::<f64>() / s)
            .collect()
    };
    let norm = |x: &[f64], w: &[f32]| -> Vec<f64> {
        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let inv = 1.0 / (ms + c.eps as f64).sqrt();
        x.iter().zip(w).map(|(v, g)| v * inv * *g as f64).collect()
    };
    let rope = |x: &mut [f64], heads: usize, pos: usize| {
        let half = hd / 2;
        for h in 0..heads {
            for i in 0..half {
                let f = (c.rope_theta as f64).powf(-2.0 * i as f64 / hd as f64);
                let (s, co) = (pos as f64 * f).sin_cos();
                let (a, b) = (x[h * hd + i], x[h * hd + i + half]);
                x[h * hd + i] = a * co - b * s;
                x[h * hd + i + half] = a * s + b * co;
            }
        }
    };
    let layers: Vec<_> = m
        .layers
        .iter()
        .map(|l| {
            [
                dense(&l.q),
                dense(&l.k),
                dense(&l.v),
                dense(&l.o),
                dense(&l.gate),
                dense(&l.up),
                dense(&l.down),
            ]
        })
        .collect();
    let mut kc: Vec<Vec<Vec<f64>>> = vec![Vec::new(); c.n_layer];
    let mut vc: Vec<Vec<Vec<f64>>> = vec![Vec::new(); c.n_layer];
    let mut x = Vec::new();
    for (pos, &t) in tokens.iter().enumerate() {
        let mut e = vec![0f32; d];
        m.embedding.row(t as usize, d, &mut e);
        x = e.iter().map(|&v| v as f64).collect();
        for (li, l) in m.layers.iter().enumerate() {
            let w = &layers[li];
            let h = norm(&x, &l.attn_norm);
            let mut q = matmul(&h, &w[0]);
            let mut k = matmul(&h, &w[1]);
            let v = matmul(&h, &w[2]);
            rope(&mut q, nh, pos);
            rope(&mut k, nkv, pos);
            let stored = |x: Vec<f64>| -> Vec<f64> {
                x.into_iter()
                    .map(|a| match kv {
                        KvType::F16 => half::f16::from_f64(a).to_f64(),
                        KvType::F32 => a as f32 as f64,
                    })
                    .collect()
            };
            kc[li].push(stored(k));
            vc[li].push(stored(v));
            let mut att = vec![0f64; d];
            for head in 0..nh {
                let kvh = head / (nh / nkv);
                let sc: Vec<f64> = kc[li]
                    .iter()
                    .map(|kk| {
                        (0..hd)
                            .map(|i| q[head * hd + i] * kk[kvh * hd + i])
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let mx = sc.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
                let ex: Vec<f64> = sc.iter().map(|s| (s - mx).exp()).collect();
                let z: f64 = ex.iter().sum();
                for (p, e) in ex.iter().enumerate() {
                    for i in 0..hd {
                        att[head * hd + i] += e / z * vc[li][p][kvh * hd + i];
                    }
                }
            }
            let o = matmul(&norm(&att, &l.attn_sub_norm), &w[3]);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let h = norm(&x, &l.ffn_norm);
            let g = matmul(&h, &w[4]);
            let u = matmul(&h, &w[5]);
            let a: Vec<f64> = g
                .iter()
                .zip(&u)
                .map(|(g, u)| g.max(0.0).powi(2) * u)
                .collect();
            let dn = matmul(&norm(&a, &l.ffn_sub_norm), &w[6]);
            x.iter_mut().zip(&dn).for_each(|(a, b)| *a += b);
        }
    }
    let h = norm(&x, &m.output_norm);
    let mut row = vec![0f32; d];
    (0..c.vocab)
        .map(|r| {
            m.lm_head().row(r, d, &mut row);
            row.iter().zip(&h).map(|(a, b)| *a as f64 * b).sum()
        })
        .collect()
}

#[test]
fn logits_match_an_independent_f64_forward() {
    let prompt = [256u32, 72, 101, 108, 108, 111, 32, 119];
    for (f, kv) in FORMATS
        .into_iter()
        .map(|f| (f, KvType::F16))
        .chain([(Format::I2S, KvType::F32), (Format::TL2, KvType::F32)])
    {
        let bytes = synthesize(Shape::TINY, f, 11).unwrap();
        let g = load(&bytes);
        let m = Model::load(&g).unwrap();
        // prefill as one batch, then one decode step: both paths are compared
        let mut s = Session::with_kv(&m, kv);
        assert_eq!(s.kv_type(), kv);
        let got_prefill = s.forward(&prompt[..6]).unwrap();
        let got = s.forward(&prompt[6..]).unwrap();
        let want_prefill = reference_logits(&m, &prompt[..6], kv);
        let want = reference_logits(&m, &prompt, kv);
        for (got, want) in [(got_prefill, want_prefill), (got, want)] {
            let scale = want.iter().fold(0f64, |a, v| a.max(v.abs()));
            let err = got
                .iter()
                .zip(&want)
                .map(|(g, w)| (*g as f64 - w).abs())
                .fold(0f64, f64::max);
            // f32 vs f64 arithmetic; an int8 activation may round differently near .5
            assert!(
                err <= 2e-2 * scale,
                "{} {kv}: max |logit error| {err} vs scale {scale}",
                f.name()
            );
            assert_eq!(
                ternforge_engine::sample::argmax(&got),
                want.iter()
                    .enumerate()
                    .fold(0, |b, (i, v)| if *v > want[b] { i } else { b }) as u32,
                "{} {kv}: argmax differs",
                f.name()
            );
        }
    }
}

#[test]
fn every_format_gives_the_same_greedy_tokens() {
    let mut all = Vec::new();
    for f in FORMATS {
        let bytes = synthesize(Shape::TINY, f, 5).unwrap();
        let g = load(&bytes);
        let m = Model::load(&g).unwrap();
        let tok = tokenizer(&g);
        let prompt = tok.encode("Ternary weights, any format.", true).unwrap();
        let mut s = Session::new(&m);
        let params = GenerateParams {
            max_tokens: 24,
            sampler: SamplerConfig::default(),
            stop_ids: Default::default(),
            stop_strings: vec![],
        };
        let out = generate(&mut s, &tok, &prompt, &params, |_| true).unwrap();
        assert_eq!(out.finish, FinishReason::Length);
        assert_eq!(out.tokens.len(), 24);
        all.push((f, out.tokens));
    }
    for (f, t) in &all[1..] {
        assert_eq!(t, &all[0].1, "{} vs {}", f.name(), all[0].0.name());
    }
}

#[test]
fn context_overflow_and_bad_tokens_are_errors() {
    let bytes = synthesize(Shape::TINY, Format::I2S, 1).unwrap();
    let g = load(&bytes);
    let m = Model::load(&g).unwrap();
    let mut s = Session::new(&m);
    let too_long = vec![1u32; m.cfg.ctx + 1];
    assert!(matches!(
        s.forward(&too_long),
        Err(ForwardError::ContextFull { .. })
    ));
    assert!(matches!(
        s.forward(&[m.cfg.vocab as u32]),
        Err(ForwardError::BadToken { .. })
    ));
    assert!(matches!(s.forward(&[]), Err(ForwardError::Empty)));
}

#[test]
fn stop_ids_and_cancellation() {
    let bytes = synthesize(Shape::TINY, Format::I2S, 3).unwrap();
    let g = load(&bytes);
    let m = Model::load(&g).unwrap();
    let tok = tokenizer(&g);
    let prompt = tok.encode("abc", true).unwrap();
    let base = GenerateParams {
        max_tokens: 8,
        sampler: SamplerConfig::default(),
        stop_ids: Default::default(),
        stop_strings: vec![],
    };
    let first = generate(&mut Session::new(&m), &tok, &prompt, &base, |_| true).unwrap();
    // stopping on the first greedy token ends before emitting anything
    let mut p = base.clone();
    p.stop_ids.insert(first.tokens[0]);
    let out = generate(&mut Session::new(&m), &tok, &prompt, &p, |_| true).unwrap();
    assert_eq!(out.finish, FinishReason::Stop);
    assert!(out.tokens.is_empty());
    // a callback returning false cancels
    let out = generate(&mut Session::new(&m), &tok, &prompt, &base, |_| false).unwrap();
    assert!(out.finish == FinishReason::Cancelled || out.text.is_empty());
}

#[test]
fn malformed_models_are_errors_naming_the_tensor() {
    let bytes = synthesize(Shape::TINY, Format::I2S, 1).unwrap();
    // drop a tensor by renaming it in the raw bytes
    let needle = b"blk.1.ffn_up.weight";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    let mut bad = bytes.clone();
    bad[at..at + needle.len()].copy_from_slice(b"blk.1.ffn_UP.weight");
    let g = load(&bad);
    let err = Model::load(&g).unwrap_err().to_string();
    assert!(
        err.contains("blk.1.ffn_up.weight") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn f32_models_convert_by_absmean() {
    use ternforge_engine::gguf::{GgufWriter, TensorType};
    // an f32 model: the synthesized projections with noise added
    let bytes = synthesize(Shape::TINY, Format::I2S, 4).unwrap();
    let g = load(&bytes);
    let mut w = GgufWriter::new();
    for (k, v) in g
        .metadata()
        .iter()
        .filter(|(k, _)| *k != "general.alignment")
    {
        w.add_kv(k, v.clone()).unwrap();
    }
    for t in g.tensors() {
        if t.ty == TensorType::I2_S {
            let (k, n) = (t.dims[0] as usize, t.dims[1] as usize);
            let v = reference::dequantize(
                Format::I2S.spec(),
                &t.data[..Format::I2S.tensor_bytes(n, k).unwrap()],
                n,
                k,
            );
            let noisy: Vec<u8> = v
                .iter()
                .enumerate()
                .flat_map(|(i, x)| (x * 1.3 + ((i % 7) as f32 - 3.0) * 0.01).to_le_bytes())
                .collect();
            w.add_tensor(t.name, t.dims, TensorType::F32, noisy)
                .unwrap();
        } else {
            w.add_tensor(t.name, t.dims, t.ty, t.data.to_vec()).unwrap();
        }
    }
    let f32_model = w.to_bytes().unwrap();
    for target in [Format::I2S, Format::TQ1_0] {
        let out = ternforge_engine::convert::convert(&f32_model, target, |_, _, _| {}).unwrap();
        let g2 = load(&out);
        let m = Model::load(&g2).unwrap();
        assert!(m.tensor_formats().iter().all(|(_, f)| *f == target));
        let logits = Session::new(&m).forward(&[256, 1, 2, 3]).unwrap();
        assert!(logits.iter().all(|v| v.is_finite()));
    }
}

#[test]
fn a_set_cancel_flag_stops_before_any_work() {
    use std::sync::atomic::AtomicBool;
    let bytes = synthesize(Shape::TINY, Format::I2S, 3).unwrap();
    let g = load(&bytes);
    let m = Model::load(&g).unwrap();
    let tok = tokenizer(&g);
    let params = GenerateParams {
        max_tokens: 8,
        sampler: SamplerConfig::default(),
        stop_ids: Default::default(),
        stop_strings: vec![],
    };
    let mut s = Session::new(&m);
    let out = ternforge_engine::generate::generate_cancellable(
        &mut s,
        &tok,
        &[256, 1, 2],
        &params,
        &AtomicBool::new(true),
        |_| true,
    )
    .unwrap();
    assert_eq!(out.finish, FinishReason::Cancelled);
    assert!(out.tokens.is_empty());
    assert_eq!(s.pos(), 0, "no prefill ran");
}

#[test]
fn q8_lm_head_tracks_the_f16_head() {
    let bytes = synthesize(Shape::TINY, Format::I2S, 8).unwrap();
    let g = load(&bytes);
    let m = Model::load(&g).unwrap();
    let q8 = std::sync::Arc::new(ternforge_engine::lm_head::Q8Head::build(&m));
    assert_eq!(q8.bytes(), m.cfg.vocab * m.cfg.n_embd);
    let prompt = [256u32, 10, 20, 30, 40];
    let f16 = Session::new(&m).forward(&prompt).unwrap();
    let mut s = Session::new(&m);
    s.q8_head = Some(q8);
    let q = s.forward(&prompt).unwrap();
    let scale = f16.iter().fold(0f32, |a, v| a.max(v.abs()));
    let err = f16
        .iter()
        .zip(&q)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    // int8 rounding of the head rows and of h: a few percent of the logit range at most
    assert!(err <= 0.05 * scale, "max error {err} vs scale {scale}");
}
