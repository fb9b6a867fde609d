//! # secvec-models
//!
//! Llama-family causal language models (Llama, Qwen2, Mistral, SmolLM) for the secvec
//! framework, generic over the Burn [`Backend`](burn::tensor::backend::Backend):
//!
//! - [`transformer::Llama`]: embeddings, RMSNorm, rotate-half RoPE (with Llama-3 scaling),
//!   grouped-query attention with causal and padding masks, SwiGLU MLP, tied or untied LM head,
//!   optional q/k/v bias;
//! - [`linear::Projection`]: the single linear type of all seven projections, addressable by
//!   [`linear::ProjectionId`], carrying named [`linear::LoraAdapter`]s (the seam of the security
//!   vectors in `secvec-core`);
//! - loading from GGUF ([`gguf`], [`gguf_source`]) and Hugging Face directories ([`hf`]);
//!   [`loader::load_model`] takes either, or a known name fetched by [`registry`];
//! - f32 or mixed-precision (bf16/f16 products, f32 master weights) compute, [`precision`];
//! - tokenizer and chat templates ([`tokenizer`], [`chat`]);
//! - batched KV-cache generation ([`generation`], [`sampling`]).

pub mod attention;
pub mod cache;
pub mod chat;
pub mod config;
pub mod error;
pub mod generation;
pub mod gguf;
pub mod gguf_source;
pub mod hf;
pub mod kernels;
pub mod linear;
pub mod loader;
pub mod mlp;
pub mod norm;
pub mod precision;
pub mod registry;
pub mod rope;
pub mod sampling;
pub mod steering;
// Helpers of the workspace's test suites (fixtures, comparisons; they panic on failure): public
// only so that the other crates' tests can share them, hidden from the documented API.
#[doc(hidden)]
pub mod testing;
pub mod tokenizer;
pub mod transformer;
pub mod weights;

pub use chat::Message;
pub use config::LlamaConfig;
pub use error::{ModelError, Result};
pub use generation::{Generated, GenerationConfig, generate};
pub use linear::{LoraAdapter, Projection, ProjectionId, ProjectionKind};
pub use loader::{LoadedModel, ModelSource, load_model};
pub use precision::Precision;
pub use sampling::Sampling;
pub use steering::SteeringVector;
pub use tokenizer::TextTokenizer;
pub use transformer::Llama;
