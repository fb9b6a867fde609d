//! One entry point that turns a model reference (a known name, a `.gguf` file or a Hugging Face
//! directory) into a ready model and tokenizer on any backend.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;

use crate::config::{HfConfig, LlamaConfig};
use crate::error::{ModelError, Result};
use crate::gguf_source::GgufSource;
use crate::hf::SafetensorsSource;
use crate::registry;
use crate::tokenizer::TextTokenizer;
use crate::transformer::Llama;
use crate::weights::build_llama;

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A known model fetched into the cache, e.g. `smollm2-135m-instruct`.
    Known(registry::KnownModel),
    /// A GGUF file.
    Gguf(PathBuf),
    /// A Hugging Face model directory.
    HfDir(PathBuf),
}

impl ModelSource {
    /// Interprets a CLI/RON model reference: a known name, a `.gguf` path, or a directory.
    pub fn parse(reference: &str) -> Result<Self> {
        if let Some(known) = registry::known_model(reference) {
            return Ok(ModelSource::Known(known));
        }
        let path = PathBuf::from(reference);
        if path.is_dir() {
            Ok(ModelSource::HfDir(path))
        } else if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            if path.is_file() {
                Ok(ModelSource::Gguf(path))
            } else {
                Err(ModelError::io(
                    path,
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
                ))
            }
        } else {
            Err(ModelError::NotAModel { path })
        }
    }

    /// A short human-readable name.
    pub fn display_name(&self) -> String {
        match self {
            ModelSource::Known(k) => k.name.to_string(),
            ModelSource::Gguf(p) | ModelSource::HfDir(p) => p.display().to_string(),
        }
    }
}

/// A loaded model with its tokenizer.
#[derive(Debug)]
pub struct LoadedModel<B: Backend> {
    pub model: Llama<B>,
    pub tokenizer: TextTokenizer,
    pub config: LlamaConfig,
    /// The file or directory the weights came from.
    pub path: PathBuf,
}

/// Loads a model. `cache` overrides the cache directory of known models.
pub fn load_model<B: Backend>(
    source: &ModelSource,
    cache: Option<&Path>,
    device: &B::Device,
) -> Result<LoadedModel<B>> {
    match source {
        ModelSource::Known(known) => {
            let path = known.ensure(&registry::cache_dir(cache))?;
            load_gguf(&path, device)
        }
        ModelSource::Gguf(path) => load_gguf(path, device),
        ModelSource::HfDir(dir) => load_hf_dir(dir, device),
    }
}

/// Loads a GGUF file.
pub fn load_gguf<B: Backend>(path: &Path, device: &B::Device) -> Result<LoadedModel<B>> {
    let source = GgufSource::open(path)?;
    let config = source.config()?;
    let tokenizer = source.tokenizer()?;
    let model = build_llama(&config, &source, device)?;
    Ok(LoadedModel {
        model,
        tokenizer,
        config,
        path: path.to_path_buf(),
    })
}

/// Loads a Hugging Face model directory.
pub fn load_hf_dir<B: Backend>(dir: &Path, device: &B::Device) -> Result<LoadedModel<B>> {
    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        return Err(ModelError::NotAModel {
            path: dir.to_path_buf(),
        });
    }
    let hf = HfConfig::from_file(&config_path)?;
    let config = hf.to_llama_config(&config_path)?;
    let mut eos: Vec<u32> = hf
        .eos_token_id
        .as_ref()
        .map(|t| t.to_vec())
        .unwrap_or_default();
    let gen_path = dir.join("generation_config.json");
    if gen_path.is_file() {
        let text = std::fs::read_to_string(&gen_path).map_err(|e| ModelError::io(&gen_path, e))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| ModelError::Json {
                path: gen_path.clone(),
                source,
            })?;
        if let Some(ids) = value
            .get("eos_token_id")
            .cloned()
            .and_then(|v| serde_json::from_value::<crate::config::TokenIds>(v).ok())
        {
            for id in ids.to_vec() {
                if !eos.contains(&id) {
                    eos.push(id);
                }
            }
        }
    }
    let pad = hf
        .pad_token_id
        .as_ref()
        .and_then(|t| t.to_vec().first().copied());
    let tokenizer = TextTokenizer::from_hf_dir(dir, &eos, pad)?;
    let source = SafetensorsSource::open_dir(dir)?;
    let model = build_llama(&config, &source, device)?;
    Ok(LoadedModel {
        model,
        tokenizer,
        config,
        path: dir.to_path_buf(),
    })
}
