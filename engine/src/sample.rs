//! Token sampling: greedy, temperature, top-k, top-p, repetition penalty, seeded.

/// Sampling parameters. `temperature <= 0` is greedy.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `top_p` (1 = all).
    pub top_p: f32,
    /// Divide positive (multiply negative) logits of already-seen tokens (1 = off).
    pub repetition_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repetition_window: usize,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.0,
            top_k: 40,
            top_p: 0.95,
            repetition_penalty: 1.0,
            repetition_window: 64,
            seed: 0x7e4f_0c2a_9d1b_3865,
        }
    }
}

impl SamplerConfig {
    /// Reject parameters that make no sense (NaN, negative, p outside (0, 1]).
    pub fn validate(&self) -> Result<(), String> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(format!(
                "temperature must be >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !self.repetition_penalty.is_finite() || self.repetition_penalty <= 0.0 {
            return Err(format!(
                "repetition_penalty must be > 0, got {}",
                self.repetition_penalty
            ));
        }
        Ok(())
    }
}

/// A deterministic sampler (xorshift64* RNG seeded from the config).
#[derive(Clone, Debug)]
pub struct Sampler {
    cfg: SamplerConfig,
    state: u64,
}

impl Sampler {
    pub fn new(cfg: SamplerConfig) -> Sampler {
        let state = cfg.seed ^ 0x9e37_79b9_7f4a_7c15;
        Sampler {
            cfg,
            state: if state == 0 { 1 } else { state },
        }
    }

    fn next_f32(&mut self) -> f32 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let v = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (v >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Pick the next token from `logits` given the tokens generated so far (`history`).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let mut l = logits.to_vec();
        if self.cfg.repetition_penalty != 1.0 {
            let start = history.len().saturating_sub(self.cfg.repetition_window);
            let mut seen: Vec<u32> = history[start..].to_vec();
            seen.sort_unstable();
            seen.dedup();
            for t in seen {
                if let Some(v) = l.get_mut(t as usize) {
                    *v = if *v > 0.0 {
                        *v / self.cfg.repetition_penalty
                    } else {
                        *v * self.cfg.repetition_penalty
                    };
                }
            }
        }
        if self.cfg.temperature <= 0.0 {
            return argmax(&l);
        }
        let mut idx: Vec<usize> = (0..l.len()).filter(|&i| !l[i].is_nan()).collect();
        if idx.is_empty() {
            return 0;
        }
        idx.sort_unstable_by(|&a, &b| l[b].total_cmp(&l[a]).then(a.cmp(&b)));
        if self.cfg.top_k > 0 {
            idx.truncate(self.cfg.top_k);
        }
        let mx = l[idx[0]];
        let mut p: Vec<f32> = idx
            .iter()
            .map(|&i| ((l[i] - mx) / self.cfg.temperature).exp())
            .collect();
        let sum: f32 = p.iter().sum();
        p.iter_mut().for_each(|v| *v /= sum);
        let mut cum = 0f32;
        let mut keep = p.len();
        for (i, v) in p.iter().enumerate() {
            cum += v;
            if cum >= self.cfg.top_p {
                keep = i + 1;
                break;
            }
        }
        p.truncate(keep);
        let total: f32 = p.iter().sum();
        let r = self.next_f32() * total;
        let mut acc = 0f32;
        for (i, v) in p.iter().enumerate() {
            acc += v;
            if r < acc {
                return idx[i] as u32;
            }
        }
        idx[keep - 1] as u32
    }
}

/// Index of the largest logit (the first on ties; NaN never wins).
pub fn argmax(l: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &v) in l.iter().enumerate() {
        if v > l[best] || l[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_ties() {
        let mut s = Sampler::new(SamplerConfig::default());
        assert_eq!(s.sample(&[0.1, 2.0, 2.0, -1.0], &[]), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0, 0.5]), 1);
    }

    #[test]
    fn seeded_sampling_is_deterministic_and_respects_top_k() {
        let cfg = SamplerConfig {
            temperature: 1.0,
            top_k: 2,
            top_p: 1.0,
            seed: 42,
            ..Default::default()
        };
        let logits = [0.0, 1.0, 3.0, 2.9, -5.0];
        let a: Vec<u32> = {
            let mut s = Sampler::new(cfg.clone());
            (0..200).map(|_| s.sample(&logits, &[])).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(cfg.clone());
            (0..200).map(|_| s.sample(&logits, &[])).collect()
        };
        assert_eq!(a, b);
        assert!(
            a.iter().all(|&t| t == 2 || t == 3),
            "top-k 2 keeps tokens 2 and 3"
        );
        assert!(a.contains(&2) && a.contains(&3), "both are sampled");
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        let cfg = SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            seed: 7,
            ..Default::default()
        };
        let mut s = Sampler::new(cfg);
        // token 0 alone holds far more than half the mass
        for _ in 0..100 {
            assert_eq!(s.sample(&[10.0, 0.0, 0.0, 0.0], &[]), 0);
        }
    }

    #[test]
    fn repetition_penalty_changes_the_greedy_choice() {
        let cfg = SamplerConfig {
            repetition_penalty: 2.0,
            ..Default::default()
        };
        let mut s = Sampler::new(cfg);
        assert_eq!(s.sample(&[3.0, 2.0], &[]), 0);
        assert_eq!(s.sample(&[3.0, 2.0], &[0]), 1, "3/2 < 2");
    }

    #[test]
    fn invalid_configs_are_rejected() {
        let bad = |c: SamplerConfig| c.validate().is_err();
        assert!(bad(SamplerConfig {
            temperature: -1.0,
            ..Default::default()
        }));
        assert!(bad(SamplerConfig {
            top_p: 0.0,
            ..Default::default()
        }));
        assert!(bad(SamplerConfig {
            top_p: f32::NAN,
            ..Default::default()
        }));
        assert!(bad(SamplerConfig {
            repetition_penalty: 0.0,
            ..Default::default()
        }));
        assert!(SamplerConfig::default().validate().is_ok());
    }
}
