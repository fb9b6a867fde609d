//! Model hyper-parameters.
//!
//! [`LlamaConfig`] is the Burn config the modules are built from. [`HfConfig`] deserialises a
//! Hugging Face `config.json` directly (llama, qwen2 and mistral model types), in the manner of
//! candle-transformers, and converts into a [`LlamaConfig`]; the GGUF loader fills the same struct
//! from GGUF metadata.

use std::path::Path;

use burn::config::Config;
use serde::Deserialize;

use crate::error::{ModelError, Result};

/// Llama-3-style frequency-dependent RoPE scaling (`rope_type: "llama3"`).
#[derive(Config, Debug, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

/// Hyper-parameters of a Llama-family decoder (Llama, Qwen2, Mistral, SmolLM).
#[derive(Config, Debug, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    #[config(default = 1e-5)]
    pub rms_norm_eps: f64,
    #[config(default = 10000.0)]
    pub rope_theta: f64,
    #[config(default = "None")]
    pub rope_scaling: Option<Llama3RopeScaling>,
    #[config(default = 2048)]
    pub max_position_embeddings: usize,
    #[config(default = true)]
    pub tie_word_embeddings: bool,
    /// Bias on the q, k and v projections (Qwen2 has it).
    #[config(default = false)]
    pub attention_bias: bool,
    /// Bias on the o projection (Llama's `attention_bias` also covers o_proj; Qwen2's does not).
    #[config(default = false)]
    pub o_bias: bool,
    #[config(default = false)]
    pub mlp_bias: bool,
}

impl LlamaConfig {
    /// Query heads per key/value head.
    pub fn group_size(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }

    /// Checks the relations between fields that the modules rely on.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |field: &str, cause: String| ModelError::UnsupportedConfig {
            path: path.to_path_buf(),
            field: field.to_string(),
            cause,
        };
        for (field, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
        ] {
            if value == 0 {
                return Err(bad(field, "must be positive".into()));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(bad(
                "num_key_value_heads",
                format!(
                    "{} query heads cannot be grouped over {} key/value heads",
                    self.num_heads, self.num_kv_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(bad(
                "head_dim",
                "rotary embeddings need an even head_dim".into(),
            ));
        }
        if self.rope_theta.is_nan() || self.rope_theta <= 0.0 {
            return Err(bad("rope_theta", "must be positive".into()));
        }
        Ok(())
    }
}

/// Token ids that a `config.json` may give as one number or a list.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

/// A Hugging Face `config.json` of a Llama-family model, as written by transformers.
#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    pub model_type: Option<String>,
    #[serde(default)]
    pub architectures: Vec<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub rms_norm_eps: Option<f64>,
    pub rope_theta: Option<f64>,
    /// transformers < 5: `{"rope_type": "llama3", "factor": ..}`.
    pub rope_scaling: Option<serde_json::Value>,
    /// transformers >= 5: `{"rope_theta": .., "rope_type": ..}`.
    pub rope_parameters: Option<serde_json::Value>,
    pub max_position_embeddings: Option<usize>,
    pub tie_word_embeddings: Option<bool>,
    pub attention_bias: Option<bool>,
    pub mlp_bias: Option<bool>,
    pub hidden_act: Option<String>,
    pub bos_token_id: Option<TokenIds>,
    pub eos_token_id: Option<TokenIds>,
    pub pad_token_id: Option<TokenIds>,
}

/// The model families this crate implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFamily {
    Llama,
    Qwen2,
    Mistral,
}

impl HfConfig {
    /// Reads and parses `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        serde_json::from_str(&text).map_err(|source| ModelError::Json {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The model family, from `model_type` (or, failing that, `architectures`).
    pub fn family(&self, path: &Path) -> Result<ModelFamily> {
        let model_type = match &self.model_type {
            Some(t) => t.clone(),
            None => self
                .architectures
                .first()
                .map(|a| a.trim_end_matches("ForCausalLM").to_lowercase())
                .unwrap_or_default(),
        };
        match model_type.as_str() {
            "llama" => Ok(ModelFamily::Llama),
            "qwen2" => Ok(ModelFamily::Qwen2),
            "mistral" => Ok(ModelFamily::Mistral),
            other => Err(ModelError::UnknownModelType {
                path: path.to_path_buf(),
                model_type: other.to_string(),
            }),
        }
    }

    /// Converts into the module config, rejecting what the modules do not implement.
    pub fn to_llama_config(&self, path: &Path) -> Result<LlamaConfig> {
        let family = self.family(path)?;
        let unsupported = |field: &str, cause: String| ModelError::UnsupportedConfig {
            path: path.to_path_buf(),
            field: field.to_string(),
            cause,
        };
        if let Some(act) = &self.hidden_act
            && act != "silu"
        {
            return Err(unsupported(
                "hidden_act",
                format!("`{act}` (only `silu` is implemented)"),
            ));
        }
        let rope_value = self.rope_parameters.as_ref().or(self.rope_scaling.as_ref());
        let mut rope_theta = self.rope_theta;
        let mut rope_scaling = None;
        if let Some(value) = rope_value {
            if let Some(theta) = value.get("rope_theta").and_then(|v| v.as_f64()) {
                rope_theta = Some(theta);
            }
            let rope_type = value
                .get("rope_type")
                .or_else(|| value.get("type"))
                .and_then(|v| v.as_str())
                .unwrap_or("default");
            match rope_type {
                "default" => {}
                "llama3" => {
                    let num = |key: &str| {
                        value.get(key).and_then(|v| v.as_f64()).ok_or_else(|| {
                            unsupported("rope_scaling", format!("llama3 scaling needs `{key}`"))
                        })
                    };
                    rope_scaling = Some(Llama3RopeScaling {
                        factor: num("factor")?,
                        low_freq_factor: num("low_freq_factor")?,
                        high_freq_factor: num("high_freq_factor")?,
                        original_max_position_embeddings: num("original_max_position_embeddings")?
                            as usize,
                    });
                }
                other => {
                    return Err(unsupported(
                        "rope_scaling",
                        format!("rope type `{other}` (implemented: default, llama3)"),
                    ));
                }
            }
        }
        let num_heads = self.num_attention_heads;
        let head_dim = self
            .head_dim
            .unwrap_or(self.hidden_size.checked_div(num_heads).unwrap_or(0));
        let (attention_bias, o_bias) = match family {
            // Qwen2 always has q/k/v biases and never an o_proj bias.
            ModelFamily::Qwen2 => (true, false),
            ModelFamily::Llama | ModelFamily::Mistral => {
                let b = self.attention_bias.unwrap_or(false);
                (b, b)
            }
        };
        let config = LlamaConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            num_heads,
            num_kv_heads: self.num_key_value_heads.unwrap_or(num_heads),
            head_dim,
            rms_norm_eps: self.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: rope_theta.unwrap_or(10000.0),
            rope_scaling,
            max_position_embeddings: self.max_position_embeddings.unwrap_or(2048),
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            attention_bias,
            o_bias,
            mlp_bias: self.mlp_bias.unwrap_or(false),
        };
        config.validate(path)?;
        Ok(config)
    }
}
