//! Typed errors of the model layer. Every variant names the file (or directory) it is about and
//! the cause in plain words, so that a user who passed a wrong path or a broken checkpoint knows
//! what to fix.

use std::path::PathBuf;

use crate::gguf::GgufError;

/// Result alias of the model layer.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// Everything that can go wrong while resolving, loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: invalid safetensors file: {cause}")]
    Safetensors { path: PathBuf, cause: String },
    #[error("{path}: unknown model type `{model_type}` (supported: llama, qwen2, mistral)")]
    UnknownModelType { path: PathBuf, model_type: String },
    #[error("{path}: unsupported configuration: field `{field}`: {cause}")]
    UnsupportedConfig {
        path: PathBuf,
        field: String,
        cause: String,
    },
    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor { path: PathBuf, name: String },
    #[error(
        "{path}: tensor `{name}` has shape {found:?}, but the model configuration needs {expected:?}"
    )]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{path}: tensor `{name}` has unsupported dtype {dtype} (supported: F32, F16, BF16)")]
    UnsupportedDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("{dir}: no tokenizer found (expected `tokenizer.json` in the model directory)")]
    MissingTokenizer { dir: PathBuf },
    #[error("{path}: tokenizer: {cause}")]
    Tokenizer { path: PathBuf, cause: String },
    #[error(
        "{path}: no chat template (expected `chat_template` in tokenizer_config.json, a chat_template.jinja file, or `tokenizer.chat_template` in the GGUF)"
    )]
    MissingChatTemplate { path: PathBuf },
    #[error("chat template of {path}: {cause}")]
    Template { path: PathBuf, cause: String },
    #[error(
        "{path}: not a model: expected a `.gguf` file, a Hugging Face model directory with config.json, or a known model name (smollm2-135m-instruct)"
    )]
    NotAModel { path: PathBuf },
    #[error("could not obtain model `{name}`: {cause}\n{hint}")]
    Fetch {
        name: String,
        cause: String,
        hint: String,
    },
    #[error("invalid generation request: {0}")]
    Generation(String),
    /// NaN or ±inf among the logits that pick a token: the weights or activations overflowed.
    #[error("non-finite logits for prompt {row} of the batch at generation step {step}")]
    NonFiniteLogits { step: usize, row: usize },
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            source,
        }
    }
}
