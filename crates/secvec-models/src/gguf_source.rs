//! GGUF checkpoints as a [`WeightSource`]: tensor names mapped from llama.cpp's to Hugging
//! Face's, llama.cpp's q/k row permutation undone, hyper-parameters and tokenizer read from the
//! metadata.

use std::path::{Path, PathBuf};

use crate::config::LlamaConfig;
use crate::error::{ModelError, Result};
use crate::gguf::{self, GgufFile};
use crate::tokenizer::{SpecialTokens, TextTokenizer};
use crate::weights::WeightSource;

/// An opened GGUF file.
pub struct GgufSource {
    file: GgufFile,
    path: PathBuf,
    arch: String,
    num_heads: usize,
    num_kv_heads: usize,
}

/// The llama.cpp tensor name of a Hugging Face tensor name, if it has one.
pub fn gguf_tensor_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, suffix) = rest.rsplit_once('.')?;
    let name = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{name}.{suffix}"))
}

impl GgufSource {
    /// Opens and validates the file (header, metadata, tensor table).
    pub fn open(path: &Path) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let arch = file.get_str("general.architecture")?.to_string();
        if arch != "llama" && arch != "qwen2" {
            return Err(ModelError::UnknownModelType {
                path: path.to_path_buf(),
                model_type: arch,
            });
        }
        let num_heads = file.get_u32(&format!("{arch}.attention.head_count"))? as usize;
        let num_kv_heads = file
            .get_u32_opt(&format!("{arch}.attention.head_count_kv"))?
            .map(|v| v as usize)
            .unwrap_or(num_heads);
        Ok(Self {
            file,
            path: path.to_path_buf(),
            arch,
            num_heads,
            num_kv_heads,
        })
    }

    /// The parsed file.
    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    /// Hyper-parameters from the metadata (`llama.*` or `qwen2.*` keys).
    pub fn config(&self) -> Result<LlamaConfig> {
        let a = &self.arch;
        let f = &self.file;
        let hidden = f.get_u32(&format!("{a}.embedding_length"))? as usize;
        let tokens = f.get_string_array("tokenizer.ggml.tokens")?.len();
        let vocab = f
            .get_u32_opt(&format!("{a}.vocab_size"))?
            .map(|v| v as usize)
            .unwrap_or(tokens);
        let head_dim = f
            .get_u32_opt(&format!("{a}.attention.key_length"))?
            .or(f.get_u32_opt(&format!("{a}.rope.dimension_count"))?)
            .map(|v| v as usize)
            .unwrap_or(hidden / self.num_heads.max(1));
        let tied = !self
            .file
            .tensor_infos()
            .iter()
            .any(|t| t.name == "output.weight");
        let is_qwen = a == "qwen2";
        let config = LlamaConfig {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: f.get_u32(&format!("{a}.feed_forward_length"))? as usize,
            num_layers: f.get_u32(&format!("{a}.block_count"))? as usize,
            num_heads: self.num_heads,
            num_kv_heads: self.num_kv_heads,
            head_dim,
            rms_norm_eps: f
                .get_f32_opt(&format!("{a}.attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-5) as f64,
            rope_theta: f
                .get_f32_opt(&format!("{a}.rope.freq_base"))?
                .unwrap_or(10000.0) as f64,
            rope_scaling: None,
            max_position_embeddings: f
                .get_u32_opt(&format!("{a}.context_length"))?
                .map(|v| v as usize)
                .unwrap_or(2048),
            tie_word_embeddings: tied,
            attention_bias: is_qwen,
            o_bias: false,
            mlp_bias: false,
        };
        config.validate(&self.path)?;
        Ok(config)
    }

    /// The tokenizer built from the GGUF vocabulary, merges and chat template.
    pub fn tokenizer(&self) -> Result<TextTokenizer> {
        let json = gguf::tokenizer_json_from_gguf(&self.file)?;
        let inner = TextTokenizer::parse_tokenizer_json(&json, &self.path)?;
        let ids = gguf::GgufSpecialTokens::from_gguf(&self.file)?;
        let special = SpecialTokens {
            bos: ids.bos,
            eos: ids.eos.into_iter().collect(),
            pad: ids.pad,
        };
        let template = gguf::chat_template(&self.file).map(|t| (t, self.path.clone()));
        TextTokenizer::new(inner, template, special, self.path.clone())
    }
}

impl WeightSource for GgufSource {
    fn origin(&self) -> &Path {
        &self.path
    }

    fn tensor(&self, name: &str) -> Result<Option<(Vec<f32>, Vec<usize>)>> {
        let Some(gguf_name) = gguf_tensor_name(name) else {
            return Ok(None);
        };
        if !self.file.tensor_infos().iter().any(|t| t.name == gguf_name) {
            return Ok(None);
        }
        let (data, shape) = self.file.tensor_f32(&gguf_name)?;
        // llama.cpp permutes q/k rows for Llama (not Qwen2) so that its RoPE can rotate pairs.
        let heads = if self.arch == "llama" && gguf_name.ends_with("attn_q.weight") {
            Some(self.num_heads)
        } else if self.arch == "llama" && gguf_name.ends_with("attn_k.weight") {
            Some(self.num_kv_heads)
        } else {
            None
        };
        let data = match (heads, shape.as_slice()) {
            (Some(h), &[rows, cols]) => {
                gguf::unpermute_qk(&data, rows, cols, h).map_err(|e| ModelError::ShapeMismatch {
                    path: self.path.clone(),
                    name: format!("{gguf_name} ({e})"),
                    expected: vec![h * 2, cols],
                    found: shape.clone(),
                })?
            }
            _ => data,
        };
        Ok(Some((data, shape)))
    }
}
