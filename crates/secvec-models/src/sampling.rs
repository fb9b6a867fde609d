//! Choosing the next token from logits: greedy or temperature + nucleus (top-p) sampling.

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub enum Sampling {
    /// Highest logit (first index on ties, as `torch.argmax`).
    #[default]
    Greedy,
    /// Sample from `softmax(logits / temperature)` restricted to the smallest set of tokens whose
    /// probability mass reaches `top_p`.
    TopP {
        temperature: f64,
        top_p: f64,
        seed: u64,
    },
}

impl Sampling {
    /// Checks the parameters' ranges.
    pub fn validate(&self) -> Result<(), String> {
        if let Sampling::TopP {
            temperature, top_p, ..
        } = self
        {
            if !(*temperature > 0.0 && temperature.is_finite()) {
                return Err(format!("temperature must be positive, got {temperature}"));
            }
            if !(*top_p > 0.0 && *top_p <= 1.0) {
                return Err(format!("top_p must be in (0, 1], got {top_p}"));
            }
        }
        Ok(())
    }
}

/// Stateful sampler (holds the RNG of seeded sampling).
#[derive(Debug)]
pub struct Sampler {
    sampling: Sampling,
    rng: StdRng,
}

/// Index of the largest value; the first one on ties; NaNs never win.
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    let mut best_value = f32::NEG_INFINITY;
    for (i, &v) in values.iter().enumerate() {
        if v > best_value {
            best = i;
            best_value = v;
        }
    }
    best
}

impl Sampler {
    pub fn new(sampling: Sampling) -> Self {
        let seed = match sampling {
            Sampling::TopP { seed, .. } => seed,
            Sampling::Greedy => 0,
        };
        Self {
            sampling,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Picks a token id from one row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        match self.sampling {
            Sampling::Greedy => argmax(logits) as u32,
            Sampling::TopP {
                temperature, top_p, ..
            } => {
                let max = logits[argmax(logits)] as f64;
                let mut probs: Vec<(usize, f64)> = logits
                    .iter()
                    .enumerate()
                    .map(|(i, &l)| (i, ((l as f64 - max) / temperature).exp()))
                    .collect();
                let total: f64 = probs.iter().map(|p| p.1).sum();
                probs.sort_by(|a, b| b.1.total_cmp(&a.1));
                let mut kept = 0;
                let mut mass = 0.0;
                for p in &probs {
                    kept += 1;
                    mass += p.1 / total;
                    if mass >= top_p {
                        break;
                    }
                }
                let nucleus = &probs[..kept];
                let nucleus_mass: f64 = nucleus.iter().map(|p| p.1).sum();
                let mut u = self.rng.random::<f64>() * nucleus_mass;
                for &(i, p) in nucleus {
                    if u < p {
                        return i as u32;
                    }
                    u -= p;
                }
                nucleus[kept - 1].0 as u32
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_first_maximum() {
        let mut s = Sampler::new(Sampling::Greedy);
        assert_eq!(s.sample(&[0.0, 3.0, 3.0, 1.0]), 1);
        assert_eq!(argmax(&[f32::NAN, -1.0]), 1);
    }

    #[test]
    fn top_p_keeps_to_the_nucleus_and_is_seeded() {
        // Token 0 has ~0.9 of the mass; with top_p 0.5 only it can be drawn.
        let logits = [5.0, 2.8, 0.0, 0.0];
        let mut s = Sampler::new(Sampling::TopP {
            temperature: 1.0,
            top_p: 0.5,
            seed: 7,
        });
        assert!((0..200).all(|_| s.sample(&logits) == 0));
        let draw = |seed| {
            let mut s = Sampler::new(Sampling::TopP {
                temperature: 2.0,
                top_p: 1.0,
                seed,
            });
            (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        let d = draw(3);
        assert!(
            d.iter().any(|&t| t != 0),
            "temperature 2 should reach other tokens"
        );
    }

    #[test]
    fn invalid_parameters_are_rejected() {
        assert!(
            Sampling::TopP {
                temperature: 0.0,
                top_p: 0.9,
                seed: 0
            }
            .validate()
            .is_err()
        );
        assert!(
            Sampling::TopP {
                temperature: 1.0,
                top_p: 1.5,
                seed: 0
            }
            .validate()
            .is_err()
        );
    }
}
