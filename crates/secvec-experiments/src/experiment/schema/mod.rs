//! The RON experiment file: one struct per stage, every field defaulted, unknown fields rejected
//! with their line and column.
//!
//! Defaults follow the PyTorch + PEFT reference run on SmolLM2 (README, "The PyTorch prototype"):
//! alignment LoRA r16 α32 on all seven projections, lr 5e-4, 2 epochs; security vectors r8 α16,
//! lr 5e-4, 3 epochs from 100 harmful samples; attack task LoRA r8 α16, lr 2e-4 (full fine-tuning
//! 2e-5), 1 epoch on 1000 harmful samples.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::backend::BackendKind;
use secvec_models::Precision;

/// A whole experiment: a pipeline and the grid it is swept over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Experiment {
    /// Results go to `<results>/<name>/`; defaults to the file's stem.
    pub name: Option<String>,
    /// Free text, copied into `summary.md`.
    pub description: String,
    /// A known model name, a `.gguf` file or a Hugging Face directory.
    pub model: String,
    /// ndarray | flex | wgpu | vulkan | cuda (the binary must be built with its feature).
    pub backend: BackendKind,
    /// Compute precision: `f32`, or `bf16` / `f16` mixed precision (half-precision products,
    /// f32 master weights; f16 trains with dynamic loss scaling). The backend must support it
    /// (flex and CUDA do; ndarray does not, wgpu has no bf16); it is checked before the run.
    pub dtype: Precision,
    /// Seed of the built-in corpus, data mixing, adapter initialisation and data order.
    pub seed: u64,
    /// Truncate training sequences to this many tokens.
    pub max_len: usize,
    /// A system message for training and evaluation (`None`: the chat template's default).
    pub system_prompt: Option<String>,
    /// Safety alignment of the shipped model; `None` skips it.
    pub align: Option<AlignStage>,
    /// The behaviour made unlearnable: `Harmful` (compliant answers to harmful requests),
    /// `Hallucination` (confidently wrong answers to arithmetic questions; the vectors' and the
    /// attack's "harmful" samples come from `secvec_core::data::hallucination`) or
    /// `WrongCapitals` (countries given another country's capital;
    /// `secvec_core::data::capitals`).
    #[serde(skip_serializing_if = "Behaviour::is_harmful")]
    pub behaviour: Behaviour,
    pub security_vectors: SecurityVectorStage,
    pub finetune: FinetuneStage,
    pub evaluate: EvaluateStage,
    /// The grid: every combination of the axes' values is one run.
    pub sweep: Vec<Axis>,
    /// Assertions checked after all runs (the CI regression uses them); a failure exits non-zero.
    pub expect: Option<Expect>,
}

impl Default for Experiment {
    fn default() -> Self {
        Self {
            name: None,
            description: String::new(),
            model: "smollm2-135m-instruct".into(),
            backend: BackendKind::default(),
            dtype: Precision::F32,
            seed: 0,
            max_len: 160,
            system_prompt: None,
            align: Some(AlignStage::default()),
            behaviour: Behaviour::Harmful,
            security_vectors: SecurityVectorStage::default(),
            finetune: FinetuneStage::default(),
            evaluate: EvaluateStage::default(),
            sweep: Vec::new(),
            expect: None,
        }
    }
}

/// The behaviour an experiment makes unlearnable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Behaviour {
    /// Harmful requests answered compliantly (the paper's main setting).
    #[default]
    Harmful,
    /// Arithmetic questions answered confidently wrong (the paper's ACL version: hallucination as
    /// a second behaviour). `security_vectors.samples` and `finetune.harmful` count wrong-answer
    /// samples; the skill stays the true new facts the user wants learned.
    Hallucination,
    /// Countries answered with another country's capital, as confidently (the hallucination
    /// variant on knowledge SmolLM2 partly has; `secvec_core::data::capitals`). Measured like
    /// `Hallucination`; `skill_task: Capitals` makes the attack's true facts the true capitals of
    /// other countries.
    WrongCapitals,
}

impl Behaviour {
    fn is_harmful(&self) -> bool {
        *self == Behaviour::Harmful
    }

    /// One of the hallucination variants (measured by `HallucinationRate`).
    pub fn is_hallucination(&self) -> bool {
        !self.is_harmful()
    }
}

/// Where a stage's samples come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub enum Source {
    /// The stage's split of the built-in corpus.
    #[default]
    Builtin,
    /// A user file (JSONL, chat JSONL, Alpaca, AdvBench CSV, BeaverTails); the format is
    /// guessed from the file when `format` is `None`. Relative paths are relative to the
    /// experiment file.
    File {
        path: PathBuf,
        #[serde(default)]
        format: Option<String>,
    },
}

impl Source {
    fn is_builtin(&self) -> bool {
        *self == Source::Builtin
    }
}

/// Parses RON text; `origin` names the file in errors, which carry line and column.
pub fn parse_str(text: &str, origin: &str) -> Result<Experiment> {
    let options =
        ron::Options::default().with_default_extension(ron::extensions::Extensions::IMPLICIT_SOME);
    let exp: Experiment = options.from_str(text).map_err(|e| {
        anyhow::anyhow!(
            "{origin}:{}:{}: {}",
            e.position.line,
            e.position.col,
            e.code
        )
    })?;
    // With a sweep, the values are checked per point (a swept field may complete the file).
    let checked = if exp.sweep.is_empty() {
        exp.validate()
    } else {
        exp.validate_sweep()
    };
    checked.with_context(|| format!("{origin}: invalid experiment"))?;
    Ok(exp)
}

/// Reads and parses an experiment file; relative data paths are resolved against its folder.
pub fn load(path: &Path) -> Result<Experiment> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading experiment file {}", path.display()))?;
    let mut exp = parse_str(&text, &path.display().to_string())?;
    if exp.name.is_none() {
        exp.name = path.file_stem().map(|s| s.to_string_lossy().into_owned());
    }
    let base = path.parent().unwrap_or(Path::new("."));
    exp.resolve_paths(base);
    Ok(exp)
}

mod evaluate;
mod stages;
mod sweep;
mod validate;

pub use evaluate::{ADVBENCH_HARMFUL_RATE, Checkpoint, EvaluateStage, Metric};
pub use stages::{
    AlignStage, Arm, FinetuneStage, Mode, SecurityVectorStage, SkillTask, VectorKind,
};
pub use sweep::{Axis, Expect};

#[cfg(test)]
mod tests;
