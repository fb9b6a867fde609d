//! Errors of secvec-core: each names the file, field or adapter it concerns.

use std::path::PathBuf;

pub type Result<T, E = CoreError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: invalid safetensors file: {cause}")]
    Safetensors { path: PathBuf, cause: String },
    #[error("{path}: field `{field}`: {cause}")]
    AdapterConfig {
        path: PathBuf,
        field: String,
        cause: String,
    },
    #[error("{path}: tensor `{key}` has shape {found:?}, but the model needs {expected:?}")]
    AdapterShape {
        path: PathBuf,
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{path}: tensor `{key}` does not name a LoRA weight of a projection of this model")]
    UnknownAdapterKey { path: PathBuf, key: String },
    #[error("{path}: tensor `{key}` is missing")]
    MissingAdapterTensor { path: PathBuf, key: String },
    #[error("no adapter named `{name}` is attached to the model")]
    NoSuchAdapter { name: String },
    #[error("an adapter named `{name}` is already attached to the model")]
    DuplicateAdapter { name: String },
    #[error("invalid adapter configuration: {0}")]
    InvalidConfig(String),
    #[error(
        "training stopped at step {step}: non-finite {what}; lower the learning rate or check the data"
    )]
    NonFinite { step: usize, what: String },
    /// NaN or ±inf met while evaluating a model: its weights or activations overflowed.
    #[error(
        "evaluation stopped: non-finite {what}; the model's weights or activations overflowed (check the training losses of the stage that made it, or evaluate in f32)"
    )]
    NonFiniteEval { what: String },
    /// A training checkpoint that cannot be used (another run's, or damaged).
    #[error("{}: training checkpoint: {cause}", path.display())]
    Checkpoint { path: PathBuf, cause: String },
    #[error(transparent)]
    Model(#[from] secvec_models::ModelError),
}

impl CoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CoreError::Io {
            path: path.into(),
            source,
        }
    }
}
