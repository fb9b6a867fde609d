//! Rotary position embeddings in the rotate-half layout used by Hugging Face Llama and Qwen2
//! checkpoints (Burn's built-in `RotaryEncoding` rotates interleaved pairs, which would need
//! permuted q/k weights), with optional Llama-3 frequency scaling.

use burn::module::Module;
use burn::tensor::{Int, Tensor, TensorData, backend::Backend};

use crate::config::{Llama3RopeScaling, LlamaConfig};

/// Largest position table built up front; longer contexts are refused by the generator.
pub const MAX_ROPE_TABLE: usize = 16_384;

/// Precomputed cos/sin tables, `[max_positions, head_dim]` each.
#[derive(Module, Debug)]
pub struct RotaryEmbedding<B: Backend> {
    pub cos: Tensor<B, 2>,
    pub sin: Tensor<B, 2>,
    pub max_positions: usize,
}

/// Inverse frequencies `theta^(-2i/d)`, with Llama-3 scaling applied when configured
/// (transformers' `_compute_llama3_parameters`).
pub fn inverse_frequencies(
    head_dim: usize,
    theta: f64,
    scaling: Option<&Llama3RopeScaling>,
) -> Vec<f64> {
    let inv: Vec<f64> = (0..head_dim / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f64 / head_dim as f64))
        .collect();
    let Some(s) = scaling else { return inv };
    let old_len = s.original_max_position_embeddings as f64;
    let low_freq_wavelen = old_len / s.low_freq_factor;
    let high_freq_wavelen = old_len / s.high_freq_factor;
    inv.into_iter()
        .map(|f| {
            let wavelen = 2.0 * std::f64::consts::PI / f;
            if wavelen < high_freq_wavelen {
                f
            } else if wavelen > low_freq_wavelen {
                f / s.factor
            } else {
                let smooth = (old_len / wavelen - s.low_freq_factor)
                    / (s.high_freq_factor - s.low_freq_factor);
                (1.0 - smooth) * f / s.factor + smooth * f
            }
        })
        .collect()
}

impl<B: Backend> RotaryEmbedding<B> {
    pub fn new(config: &LlamaConfig, device: &B::Device) -> Self {
        let max_positions = config.max_position_embeddings.clamp(1, MAX_ROPE_TABLE);
        let dim = config.head_dim;
        let inv = inverse_frequencies(dim, config.rope_theta, config.rope_scaling.as_ref());
        let mut cos = Vec::with_capacity(max_positions * dim);
        let mut sin = Vec::with_capacity(max_positions * dim);
        for pos in 0..max_positions {
            // transformers multiplies in float32; do the same so angles round identically.
            let angles: Vec<f32> = inv.iter().map(|&f| pos as f32 * f as f32).collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos()));
                sin.extend(angles.iter().map(|a| a.sin()));
            }
        }
        let shape = [max_positions, dim];
        Self {
            cos: Tensor::from_data(TensorData::new(cos, shape), device),
            sin: Tensor::from_data(TensorData::new(sin, shape), device),
            max_positions,
        }
    }

    /// The cos/sin rows of every token, gathered once per forward pass and shared by all
    /// layers: `[batch · seq, head_dim]` each, for `positions` `[batch, seq]`.
    pub fn tables(&self, positions: &Tensor<B, 2, Int>) -> RopeTables<B> {
        let [batch, seq] = positions.dims();
        let flat = positions.clone().reshape([batch * seq]);
        RopeTables {
            cos: self.cos.clone().select(0, flat.clone()),
            sin: self.sin.clone().select(0, flat),
        }
    }
}

/// Each token's rows of the cos/sin tables (see [`RotaryEmbedding::tables`]); applied to
/// token-major `[batch, seq, heads, head_dim]` queries and keys by [`RopeTables::apply`].
#[derive(Debug, Clone)]
pub struct RopeTables<B: Backend> {
    pub cos: Tensor<B, 2>,
    pub sin: Tensor<B, 2>,
}

impl<B: Backend> RopeTables<B> {
    /// Rotates `x` `[batch, seq, heads, head_dim]` (rotate-half layout).
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        crate::kernels::rope(x, &self.cos, &self.sin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Llama-3 scaling (factor 8, low 1, high 4, original context 8192, as in Llama 3.1): high
    /// frequencies (wavelength < 2048) are kept, low ones (wavelength > 8192) divided by the
    /// factor, and the band between interpolated smoothly and monotonically.
    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let s = Llama3RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        let plain = inverse_frequencies(128, 500000.0, None);
        let scaled = inverse_frequencies(128, 500000.0, Some(&s));
        assert_eq!(plain.len(), 64);
        assert!((plain[1] - 500000f64.powf(-2.0 / 128.0)).abs() < 1e-15);
        let mut saw = [false; 3];
        for (p, q) in plain.iter().zip(&scaled) {
            let wavelen = 2.0 * std::f64::consts::PI / p;
            if wavelen < 2048.0 {
                assert_eq!(p, q);
                saw[0] = true;
            } else if wavelen > 8192.0 {
                assert!((q - p / 8.0).abs() < 1e-18);
                saw[1] = true;
            } else {
                assert!(*q < *p && *q > p / 8.0);
                saw[2] = true;
            }
        }
        assert_eq!(saw, [true; 3], "all three bands are exercised");
    }
}
