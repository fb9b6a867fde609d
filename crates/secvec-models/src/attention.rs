//! Grouped-query self-attention with rotate-half RoPE, a causal mask and a key padding mask.

use burn::module::Module;
use burn::tensor::{Bool, DType, Int, Tensor, TensorData, activation::softmax, backend::Backend};

use crate::cache::KvCache;
use crate::linear::Projection;
use crate::precision::Precision;
use crate::rope::RotaryEmbedding;

/// Self-attention of one decoder layer.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub q_proj: Projection<B>,
    pub k_proj: Projection<B>,
    pub v_proj: Projection<B>,
    pub o_proj: Projection<B>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

/// A finite "minus infinity" for masked scores: a fully masked row (a left-padding query) then
/// gives a uniform distribution instead of NaNs that would leak through `0 · NaN` in later
/// layers.
fn masked_value(dtype: DType) -> f32 {
    match dtype {
        DType::F16 => -65_000.0,
        _ => -1.0e30,
    }
}

/// Builds the attention mask `[batch, 1, seq, past + seq]` (`true` = blocked): causal over
/// absolute positions, and blocking keys whose entry in `key_valid` (`[batch][past + seq]`) is
/// false. Built on the host: it is small and the same on every backend.
pub fn build_attention_mask<B: Backend>(
    batch: usize,
    seq: usize,
    past: usize,
    key_valid: Option<&[Vec<bool>]>,
    device: &B::Device,
) -> Tensor<B, 4, Bool> {
    let total = past + seq;
    let mut data = Vec::with_capacity(batch * seq * total);
    for b in 0..batch {
        for i in 0..seq {
            for j in 0..total {
                let causal_blocked = j > past + i;
                let pad_blocked = key_valid.is_some_and(|kv| !kv[b][j]);
                data.push(causal_blocked || pad_blocked);
            }
        }
    }
    Tensor::from_data(TensorData::new(data, [batch, 1, seq, total]), device)
}

impl<B: Backend> Attention<B> {
    /// `x`: `[batch, seq, hidden]`; `positions`: `[batch, seq]`; `mask`: `[batch, 1, seq, past +
    /// seq]` from [`build_attention_mask`]. The two attention products run in `precision`
    /// (and the KV cache holds keys and values in that dtype); masking and softmax run in f32.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &RotaryEmbedding<B>,
        positions: &Tensor<B, 2, Int>,
        mask: &Tensor<B, 4, Bool>,
        cache: Option<(&mut KvCache<B>, usize)>,
        precision: Precision,
    ) -> Tensor<B, 3> {
        let p = precision;
        let [batch, seq, _] = x.dims();
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let group = nh / nkv;

        let q = self
            .q_proj
            .forward(x.clone(), p)
            .reshape([batch, seq, nh, hd])
            .swap_dims(1, 2);
        let k = self
            .k_proj
            .forward(x.clone(), p)
            .reshape([batch, seq, nkv, hd])
            .swap_dims(1, 2);
        let v = self
            .v_proj
            .forward(x, p)
            .reshape([batch, seq, nkv, hd])
            .swap_dims(1, 2);
        let q = p.to_compute(rope.apply(q, positions));
        let k = p.to_compute(rope.apply(k, positions));
        let v = p.to_compute(v);
        let (k, v) = match cache {
            Some((cache, layer)) => cache.append(layer, k, v),
            None => (k, v),
        };
        let total = k.dims()[2];

        // Grouped-query attention without copying K/V per query head: the `group` query heads
        // sharing a KV head are stacked along the sequence axis (head h uses KV head h / group,
        // as transformers' `repeat_kv`).
        let q = q.reshape([batch, nkv, group * seq, hd]);
        let scores = p
            .to_f32(q.matmul(k.swap_dims(2, 3)))
            .mul_scalar(1.0 / (hd as f64).sqrt())
            .reshape([batch, nh, seq, total]);
        let fill = masked_value(scores.dtype());
        let scores = scores.mask_fill(mask.clone().expand([batch, nh, seq, total]), fill);
        let probs = p.to_compute(softmax(scores, 3).reshape([batch, nkv, group * seq, total]));
        // `out` stays in the compute dtype: o_proj's own cast is then a no-op.
        let out = probs
            .matmul(v)
            .reshape([batch, nh, seq, hd])
            .swap_dims(1, 2)
            .reshape([batch, seq, nh * hd]);
        self.o_proj.forward(out, p)
    }
}
