//! Building a [`Llama`] from a checkpoint's tensors, whatever the file format.
//!
//! Loaders ([`crate::hf`] for safetensors, [`crate::gguf_source`] for GGUF) implement
//! [`WeightSource`]: tensors by their Hugging Face name, dequantised/converted to f32, in
//! PyTorch's row-major layout. [`build_llama`] checks every shape against the config.

use std::path::Path;

use burn::module::{Param, ParamId};
use burn::tensor::{Distribution, Tensor, TensorData, backend::Backend};
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::attention::Attention;
use crate::config::LlamaConfig;
use crate::error::{ModelError, Result};
use crate::linear::Projection;
use crate::mlp::Mlp;
use crate::norm::RmsNorm;
use crate::precision::Precision;
use crate::rope::RotaryEmbedding;
use crate::transformer::{DecoderLayer, Llama};

/// A checkpoint's tensors by Hugging Face name (`model.layers.0.self_attn.q_proj.weight`).
pub trait WeightSource {
    /// The file or directory the tensors come from (for error messages).
    fn origin(&self) -> &Path;
    /// The tensor as f32 in row-major PyTorch layout with its shape, or `None` if absent.
    fn tensor(&self, name: &str) -> Result<Option<(Vec<f32>, Vec<usize>)>>;
}

/// Transposes a row-major `[rows, cols]` matrix.
pub fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; data.len()];
    // Blocked to stay cache-friendly on the 49152 × 576 embedding-sized matrices.
    const BLOCK: usize = 64;
    for r0 in (0..rows).step_by(BLOCK) {
        for c0 in (0..cols).step_by(BLOCK) {
            for r in r0..(r0 + BLOCK).min(rows) {
                for c in c0..(c0 + BLOCK).min(cols) {
                    out[c * rows + r] = data[r * cols + c];
                }
            }
        }
    }
    out
}

struct Loader<'a, B: Backend> {
    source: &'a dyn WeightSource,
    device: &'a B::Device,
}

impl<B: Backend> Loader<'_, B> {
    fn raw(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let (data, shape) = self
            .source
            .tensor(name)?
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.source.origin().to_path_buf(),
                name: name.to_string(),
            })?;
        if shape != expected {
            return Err(ModelError::ShapeMismatch {
                path: self.source.origin().to_path_buf(),
                name: name.to_string(),
                expected: expected.to_vec(),
                found: shape,
            });
        }
        Ok(data)
    }

    fn vector(&self, name: &str, len: usize) -> Result<Param<Tensor<B, 1>>> {
        let data = self.raw(name, &[len])?;
        Ok(Param::initialized(
            ParamId::new(),
            Tensor::from_data(TensorData::new(data, [len]), self.device),
        ))
    }

    /// A `[rows, cols]` matrix as stored (no transpose).
    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Param<Tensor<B, 2>>> {
        let data = self.raw(name, &[rows, cols])?;
        Ok(Param::initialized(
            ParamId::new(),
            Tensor::from_data(TensorData::new(data, [rows, cols]), self.device),
        ))
    }

    /// A PyTorch linear `[d_out, d_in]`, transposed into Burn's `[d_in, d_out]`.
    fn projection(
        &self,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<Projection<B>> {
        let w = self.raw(&format!("{prefix}.weight"), &[d_out, d_in])?;
        let weight = Param::initialized(
            ParamId::new(),
            Tensor::from_data(
                TensorData::new(transpose(&w, d_out, d_in), [d_in, d_out]),
                self.device,
            ),
        );
        let bias = if bias {
            Some(self.vector(&format!("{prefix}.bias"), d_out)?)
        } else {
            None
        };
        Ok(Projection {
            weight,
            bias,
            adapters: Vec::new(),
        })
    }
}

/// Builds the model from `source`, checking every tensor's presence and shape against `config`.
pub fn build_llama<B: Backend>(
    config: &LlamaConfig,
    source: &dyn WeightSource,
    device: &B::Device,
) -> Result<Llama<B>> {
    config.validate(source.origin())?;
    let l = Loader::<B> { source, device };
    let (d, ff) = (config.hidden_size, config.intermediate_size);
    let q_out = config.num_heads * config.head_dim;
    let kv_out = config.num_kv_heads * config.head_dim;
    let mut layers = Vec::with_capacity(config.num_layers);
    for i in 0..config.num_layers {
        let p = format!("model.layers.{i}");
        let norm = |name: &str| -> Result<RmsNorm<B>> {
            Ok(RmsNorm {
                weight: l.vector(&format!("{p}.{name}.weight"), d)?,
                eps: config.rms_norm_eps,
            })
        };
        let ab = config.attention_bias;
        layers.push(DecoderLayer {
            input_layernorm: norm("input_layernorm")?,
            self_attn: Attention {
                q_proj: l.projection(&format!("{p}.self_attn.q_proj"), d, q_out, ab)?,
                k_proj: l.projection(&format!("{p}.self_attn.k_proj"), d, kv_out, ab)?,
                v_proj: l.projection(&format!("{p}.self_attn.v_proj"), d, kv_out, ab)?,
                o_proj: l.projection(&format!("{p}.self_attn.o_proj"), q_out, d, config.o_bias)?,
                num_heads: config.num_heads,
                num_kv_heads: config.num_kv_heads,
                head_dim: config.head_dim,
            },
            post_attention_layernorm: norm("post_attention_layernorm")?,
            mlp: Mlp {
                gate_proj: l.projection(&format!("{p}.mlp.gate_proj"), d, ff, config.mlp_bias)?,
                up_proj: l.projection(&format!("{p}.mlp.up_proj"), d, ff, config.mlp_bias)?,
                down_proj: l.projection(&format!("{p}.mlp.down_proj"), ff, d, config.mlp_bias)?,
            },
            steering: Vec::new(),
        });
    }
    let lm_head = if config.tie_word_embeddings {
        None
    } else {
        let w = l.raw("lm_head.weight", &[config.vocab_size, d])?;
        Some(Param::initialized(
            ParamId::new(),
            Tensor::from_data(
                TensorData::new(transpose(&w, config.vocab_size, d), [d, config.vocab_size]),
                device,
            ),
        ))
    };
    Ok(Llama {
        embed_tokens: l.matrix("model.embed_tokens.weight", config.vocab_size, d)?,
        layers,
        norm: RmsNorm {
            weight: l.vector("model.norm.weight", d)?,
            eps: config.rms_norm_eps,
        },
        lm_head,
        rope: RotaryEmbedding::new(config, device),
        precision: Precision::F32,
    })
}

/// A model with random weights (normal, std 0.02; norms at 1), for benchmarks and tests of
/// shapes that have no checkpoint. Deterministic for a given `seed`.
pub fn random_llama<B: Backend>(config: &LlamaConfig, seed: u64, device: &B::Device) -> Llama<B> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut normal = |shape: [usize; 2]| -> Param<Tensor<B, 2>> {
        B::seed(device, rng.random());
        Param::initialized(
            ParamId::new(),
            Tensor::random(shape, Distribution::Normal(0.0, 0.02), device),
        )
    };
    let ones = |len: usize| Param::initialized(ParamId::new(), Tensor::ones([len], device));
    let proj = |normal: &mut dyn FnMut([usize; 2]) -> Param<Tensor<B, 2>>,
                d_in: usize,
                d_out: usize,
                bias: bool| Projection {
        weight: normal([d_in, d_out]),
        bias: bias.then(|| Param::initialized(ParamId::new(), Tensor::zeros([d_out], device))),
        adapters: Vec::new(),
    };
    let (d, ff) = (config.hidden_size, config.intermediate_size);
    let q_out = config.num_heads * config.head_dim;
    let kv_out = config.num_kv_heads * config.head_dim;
    let layers = (0..config.num_layers)
        .map(|_| DecoderLayer {
            input_layernorm: RmsNorm {
                weight: ones(d),
                eps: config.rms_norm_eps,
            },
            self_attn: Attention {
                q_proj: proj(&mut normal, d, q_out, config.attention_bias),
                k_proj: proj(&mut normal, d, kv_out, config.attention_bias),
                v_proj: proj(&mut normal, d, kv_out, config.attention_bias),
                o_proj: proj(&mut normal, q_out, d, config.o_bias),
                num_heads: config.num_heads,
                num_kv_heads: config.num_kv_heads,
                head_dim: config.head_dim,
            },
            post_attention_layernorm: RmsNorm {
                weight: ones(d),
                eps: config.rms_norm_eps,
            },
            mlp: Mlp {
                gate_proj: proj(&mut normal, d, ff, config.mlp_bias),
                up_proj: proj(&mut normal, d, ff, config.mlp_bias),
                down_proj: proj(&mut normal, ff, d, config.mlp_bias),
            },
            steering: Vec::new(),
        })
        .collect();
    let lm_head = (!config.tie_word_embeddings).then(|| normal([d, config.vocab_size]));
    Llama {
        embed_tokens: normal([config.vocab_size, d]),
        layers,
        norm: RmsNorm {
            weight: ones(d),
            eps: config.rms_norm_eps,
        },
        lm_head,
        rope: RotaryEmbedding::new(config, device),
        precision: Precision::F32,
    }
}
