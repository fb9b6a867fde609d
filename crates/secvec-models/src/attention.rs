//! Grouped-query self-attention with rotate-half RoPE, a causal mask and a key padding mask.

use burn::module::Module;
use burn::tensor::{Bool, Tensor, TensorData, backend::Backend};

use crate::cache::KvCache;
use crate::kernels;
use crate::linear::Projection;
use crate::precision::Precision;
use crate::rope::RopeTables;

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
    /// `x`: `[batch, seq, hidden]`; `rope`: the tokens' rotary tables; `mask`: `[batch, 1, seq,
    /// past + seq]` from [`build_attention_mask`]. The two attention products run in `precision`
    /// (and the KV cache holds keys and values in that dtype); masking and softmax run in f32.
    /// Queries, keys and values stay token-major (`[batch, seq, heads, head_dim]`) throughout:
    /// no transposes on the way in or out.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        mask: &Tensor<B, 4, Bool>,
        cache: Option<(&mut KvCache<B>, usize)>,
        precision: Precision,
    ) -> Tensor<B, 3> {
        let p = precision;
        let [batch, seq, _] = x.dims();
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let q = self
            .q_proj
            .forward(x.clone(), p)
            .reshape([batch, seq, nh, hd]);
        let k = self
            .k_proj
            .forward(x.clone(), p)
            .reshape([batch, seq, nkv, hd]);
        let v = self.v_proj.forward(x, p).reshape([batch, seq, nkv, hd]);
        let q = p.to_compute(rope.apply(q));
        let k = p.to_compute(rope.apply(k));
        let v = p.to_compute(v);
        let (k, v) = match cache {
            Some((cache, layer)) => cache.append(layer, k, v),
            None => (k, v),
        };
        // The output stays in the compute dtype: o_proj's own cast is then a no-op.
        let out = kernels::attention(q, k, v, mask, p);
        self.o_proj.forward(out, p)
    }
}
