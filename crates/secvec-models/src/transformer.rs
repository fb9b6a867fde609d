//! The Llama-family decoder: embeddings, decoder layers, final norm and LM head.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{
    Bool, FloatDType, Int, Tensor, TensorData, backend::Backend, module::embedding,
};

use crate::attention::{Attention, build_attention_mask};
use crate::cache::KvCache;
use crate::linear::{Projection, ProjectionId, ProjectionKind};
use crate::mlp::Mlp;
use crate::norm::RmsNorm;
use crate::precision::Precision;
use crate::rope::{RopeTables, RotaryEmbedding};
use crate::steering::SteeringVector;

/// One pre-norm decoder layer.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    pub input_layernorm: RmsNorm<B>,
    pub self_attn: Attention<B>,
    pub post_attention_layernorm: RmsNorm<B>,
    pub mlp: Mlp<B>,
    /// Activation-steering vectors added to this layer's output (see [`crate::steering`]).
    pub steering: Vec<SteeringVector<B>>,
}

impl<B: Backend> DecoderLayer<B> {
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        mask: &Tensor<B, 4, Bool>,
        cache: Option<(&mut KvCache<B>, usize)>,
        precision: Precision,
    ) -> Tensor<B, 3> {
        self.forward_perturbed(x, rope, mask, cache, precision, None)
    }

    /// [`DecoderLayer::forward`] with `attn_delta` `[batch, seq, hidden]` added to the attention
    /// block's output before the residual sum (perturbation-aware training, e.g. Vaccine's).
    pub fn forward_perturbed(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        mask: &Tensor<B, 4, Bool>,
        cache: Option<(&mut KvCache<B>, usize)>,
        precision: Precision,
        attn_delta: Option<Tensor<B, 3>>,
    ) -> Tensor<B, 3> {
        let attn = self.self_attn.forward(
            self.input_layernorm.forward(x.clone(), precision),
            rope,
            mask,
            cache,
            precision,
        );
        let attn = match attn_delta {
            Some(d) => attn + d,
            None => attn,
        };
        let h = x + attn;
        let out = h.clone()
            + self.mlp.forward(
                self.post_attention_layernorm.forward(h, precision),
                precision,
            );
        self.steering.iter().fold(out, |h, s| s.apply(h))
    }

    pub fn projection(&self, kind: ProjectionKind) -> &Projection<B> {
        match kind {
            ProjectionKind::Q => &self.self_attn.q_proj,
            ProjectionKind::K => &self.self_attn.k_proj,
            ProjectionKind::V => &self.self_attn.v_proj,
            ProjectionKind::O => &self.self_attn.o_proj,
            ProjectionKind::Gate => &self.mlp.gate_proj,
            ProjectionKind::Up => &self.mlp.up_proj,
            ProjectionKind::Down => &self.mlp.down_proj,
        }
    }

    pub fn projection_mut(&mut self, kind: ProjectionKind) -> &mut Projection<B> {
        match kind {
            ProjectionKind::Q => &mut self.self_attn.q_proj,
            ProjectionKind::K => &mut self.self_attn.k_proj,
            ProjectionKind::V => &mut self.self_attn.v_proj,
            ProjectionKind::O => &mut self.self_attn.o_proj,
            ProjectionKind::Gate => &mut self.mlp.gate_proj,
            ProjectionKind::Up => &mut self.mlp.up_proj,
            ProjectionKind::Down => &mut self.mlp.down_proj,
        }
    }
}

/// A Llama-family causal language model.
#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    /// `[vocab, hidden]`.
    pub embed_tokens: Param<Tensor<B, 2>>,
    pub layers: Vec<DecoderLayer<B>>,
    pub norm: RmsNorm<B>,
    /// `[hidden, vocab]`; `None` when the head is tied to `embed_tokens`.
    pub lm_head: Option<Param<Tensor<B, 2>>>,
    pub rope: RotaryEmbedding<B>,
    /// The precision matrix products run in; parameters stay f32 (see [`Precision`]). Set it
    /// with [`Llama::with_precision`]; it survives `valid()` and autodiff conversion.
    pub precision: Precision,
}

/// Absolute positions of left- or right-padded rows: each real token's index among the real
/// tokens of its row (padding gets 0), as transformers derives `position_ids` from the
/// attention mask.
pub fn positions_from_mask(valid: &[Vec<bool>], offsets: Option<&[usize]>) -> Vec<Vec<i64>> {
    valid
        .iter()
        .enumerate()
        .map(|(b, row)| {
            let mut next = offsets.map(|o| o[b]).unwrap_or(0) as i64;
            row.iter()
                .map(|&v| {
                    if v {
                        next += 1;
                        next - 1
                    } else {
                        0
                    }
                })
                .collect()
        })
        .collect()
}

/// Uploads a `[batch][seq]` matrix of integers.
pub fn int_tensor<B: Backend>(rows: &[Vec<i64>], device: &B::Device) -> Tensor<B, 2, Int> {
    let batch = rows.len();
    let seq = rows.first().map(|r| r.len()).unwrap_or(0);
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [batch, seq]), device)
}

impl<B: Backend> Llama<B> {
    /// The same model computing in `precision` (parameters are not converted).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// Stores every parameter (adapters included) in the compute dtype, halving the memory and
    /// the bandwidth of inference; products then need no casts. Norms, softmax and the residual
    /// stream still run in f32. For inference only: training needs f32 master weights (an
    /// optimizer step on bf16 weights loses updates smaller than 2⁻⁸ of the weight). A no-op in
    /// f32.
    pub fn with_half_weights(self) -> Self {
        let Some(dtype) = self.precision.compute_dtype() else {
            return self;
        };
        struct Cast(FloatDType);
        impl<B: Backend> ModuleMapper<B> for Cast {
            fn map_float<const D: usize>(
                &mut self,
                param: Param<Tensor<B, D>>,
            ) -> Param<Tensor<B, D>> {
                let (id, tensor, mapper) = param.consume();
                Param::from_mapped_value(id, tensor.cast(self.0), mapper)
            }
        }
        self.map(&mut Cast(dtype))
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn vocab_size(&self) -> usize {
        self.embed_tokens.dims()[0]
    }

    pub fn hidden_size(&self) -> usize {
        self.embed_tokens.dims()[1]
    }

    pub fn device(&self) -> B::Device {
        self.embed_tokens.device()
    }

    /// The decoder's hidden states after the final norm, `[batch, seq, hidden]`.
    ///
    /// `positions` are absolute positions `[batch, seq]`; `mask` is `[batch, 1, seq, past +
    /// seq]` with `true` for blocked pairs (see [`build_attention_mask`]); with a cache, the new
    /// keys and values are appended to it.
    pub fn forward_hidden(
        &self,
        ids: Tensor<B, 2, Int>,
        positions: &Tensor<B, 2, Int>,
        mask: &Tensor<B, 4, Bool>,
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        self.hidden(ids, positions, mask, cache, None)
    }

    /// [`Llama::forward_hidden`] without a cache, with `attn_deltas[i]` `[batch, seq, hidden]`
    /// added to the attention output of layer `i` (one per layer; see
    /// [`DecoderLayer::forward_perturbed`]).
    pub fn forward_hidden_perturbed(
        &self,
        ids: Tensor<B, 2, Int>,
        positions: &Tensor<B, 2, Int>,
        mask: &Tensor<B, 4, Bool>,
        attn_deltas: &[Tensor<B, 3>],
    ) -> Tensor<B, 3> {
        assert_eq!(
            attn_deltas.len(),
            self.layers.len(),
            "one attention perturbation per layer"
        );
        self.hidden(ids, positions, mask, None, Some(attn_deltas))
    }

    /// The decoder: embeddings, every layer (with its cache, and its attention perturbation if
    /// given), the final norm.
    fn hidden(
        &self,
        ids: Tensor<B, 2, Int>,
        positions: &Tensor<B, 2, Int>,
        mask: &Tensor<B, 4, Bool>,
        mut cache: Option<&mut KvCache<B>>,
        attn_deltas: Option<&[Tensor<B, 3>]>,
    ) -> Tensor<B, 3> {
        let mut x = self
            .precision
            .to_f32(embedding(self.embed_tokens.val(), ids));
        // The tokens' rotary tables, gathered once for all layers.
        let rope = self.rope.tables(positions);
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| (c, i));
            let delta = attn_deltas.map(|d| d[i].clone());
            x = layer.forward_perturbed(x, &rope, mask, layer_cache, self.precision, delta);
        }
        self.norm.forward(x, self.precision)
    }

    /// The residual stream after every decoder layer (steering included, before the final
    /// norm), `num_layers` tensors `[batch, seq, hidden]`; no cache. `positions` and `mask` as
    /// for [`Llama::forward_hidden`].
    pub fn forward_layers(
        &self,
        ids: Tensor<B, 2, Int>,
        positions: &Tensor<B, 2, Int>,
        mask: &Tensor<B, 4, Bool>,
    ) -> Vec<Tensor<B, 3>> {
        let mut x = self
            .precision
            .to_f32(embedding(self.embed_tokens.val(), ids));
        let rope = self.rope.tables(positions);
        let mut out = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            x = layer.forward(x, &rope, mask, None, self.precision);
            out.push(x.clone());
        }
        out
    }

    /// Logits `[batch, seq, vocab]` of hidden states `[batch, seq, hidden]`.
    pub fn lm_head(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, seq, d] = hidden.dims();
        let h = hidden.reshape([batch * seq, d]);
        let p = self.precision;
        let logits = match &self.lm_head {
            Some(head) => p.matmul(h, head.val()),
            None => p.matmul(h, self.embed_tokens.val().transpose()),
        };
        logits.reshape([batch, seq, self.vocab_size()])
    }

    /// Logits of unpadded rows of equal length (positions `0..seq`, causal mask only).
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [batch, seq] = ids.dims();
        let device = ids.device();
        let positions = int_tensor::<B>(&vec![(0..seq as i64).collect(); batch], &device);
        let mask = build_attention_mask::<B>(batch, seq, 0, None, &device);
        self.lm_head(self.forward_hidden(ids, &positions, &mask, None))
    }

    /// Logits of padded rows; `valid[b][t]` is false at padding. Works with left and right
    /// padding; logits at padding positions are meaningless.
    pub fn forward_padded(&self, ids: Tensor<B, 2, Int>, valid: &[Vec<bool>]) -> Tensor<B, 3> {
        let [batch, seq] = ids.dims();
        let device = ids.device();
        let positions = int_tensor::<B>(&positions_from_mask(valid, None), &device);
        let mask = build_attention_mask::<B>(batch, seq, 0, Some(valid), &device);
        self.lm_head(self.forward_hidden(ids, &positions, &mask, None))
    }

    /// Every projection of the model, in layer order.
    pub fn projection_ids(&self) -> Vec<ProjectionId> {
        (0..self.layers.len())
            .flat_map(|layer| {
                ProjectionKind::ALL
                    .into_iter()
                    .map(move |kind| ProjectionId { layer, kind })
            })
            .collect()
    }

    /// The projection `id`; panics if `id.layer` is out of range (ids come from
    /// [`Llama::projection_ids`]).
    pub fn projection(&self, id: ProjectionId) -> &Projection<B> {
        self.layers[id.layer].projection(id.kind)
    }

    pub fn projection_mut(&mut self, id: ProjectionId) -> &mut Projection<B> {
        self.layers[id.layer].projection_mut(id.kind)
    }

    /// A new, empty KV cache for this model.
    pub fn new_cache(&self) -> KvCache<B> {
        KvCache::new(self.layers.len())
    }

    /// A new KV cache with room for `positions` positions per layer.
    pub fn new_cache_with_capacity(&self, positions: usize) -> KvCache<B> {
        KvCache::with_capacity(self.layers.len(), positions)
    }

    /// Hyper-parameters of the attention blocks `(heads, kv_heads, head_dim)`.
    pub fn attention_shape(&self) -> (usize, usize, usize) {
        let a = &self.layers[0].self_attn;
        (a.num_heads, a.num_kv_heads, a.head_dim)
    }
}
