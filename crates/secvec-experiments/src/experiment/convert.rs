//! The experiment file's flat settings turned into secvec-core's configurations, in one place.
//!
//! One experiment seed drives every random choice of a run. The three adapters a run makes are
//! initialised from it with fixed offsets, so that they start from different random matrices
//! (the same seed for all three would give the alignment LoRA, the security vectors and the task
//! LoRA identical `A` matrices) while a run stays reproducible from its one seed. Data order
//! uses the seed itself in every stage.

use secvec_core::adapter::AdapterConfig;
use secvec_core::train::{
    AlignConfig, FinetuneConfig, FinetuneMode, Schedule, SecurityVectorConfig, SecurityVectors,
    TrainConfig,
};

use super::schema::{AlignStage, Arm, Experiment, Mode, SecurityVectorStage};

/// Seed offset of the alignment LoRA's initialisation.
pub const ALIGN_SEED_OFFSET: u64 = 0;
/// Seed offset of the security vectors' initialisation.
pub const VECTORS_SEED_OFFSET: u64 = 1;
/// Seed offset of the attack's task LoRA initialisation.
pub const TASK_LORA_SEED_OFFSET: u64 = 2;

/// Training settings of a stage: core's defaults but for the stage's own values, and a cosine
/// schedule (the PyTorch prototype's, README) in every stage of an experiment.
pub fn train_config(exp: &Experiment, lr: f64, epochs: usize, batch_size: usize) -> TrainConfig {
    TrainConfig {
        lr,
        epochs,
        batch_size,
        seed: exp.seed,
        schedule: Schedule::Cosine,
        max_len: exp.max_len,
        ..TrainConfig::default()
    }
}

fn adapter(rank: usize, alpha: f64, targets: &[String], seed: u64) -> AdapterConfig {
    AdapterConfig {
        rank,
        alpha,
        targets: targets.to_vec(),
        seed,
        ..AdapterConfig::default()
    }
}

/// Stage 0: the alignment LoRA and its training.
pub fn align(exp: &Experiment, a: &AlignStage) -> AlignConfig {
    AlignConfig {
        adapter: adapter(a.rank, a.alpha, &a.targets, exp.seed + ALIGN_SEED_OFFSET),
        train: train_config(exp, a.lr, a.epochs, a.batch_size),
    }
}

/// Phase 1: the security vectors and their training.
pub fn security_vectors(exp: &Experiment, s: &SecurityVectorStage) -> SecurityVectorConfig {
    SecurityVectorConfig {
        adapter: adapter(s.rank, s.alpha, &s.targets, exp.seed + VECTORS_SEED_OFFSET),
        train: train_config(exp, s.lr, s.epochs, s.batch_size),
    }
}

/// Phase 2 for one arm: what is trained (full weights or a task LoRA) and whether the vectors
/// are active.
pub fn finetune(exp: &Experiment, arm: Arm) -> FinetuneConfig {
    let ft = &exp.finetune;
    let mode = match &ft.mode {
        Mode::Full => FinetuneMode::Full,
        Mode::Lora {
            rank,
            alpha,
            targets,
        } => FinetuneMode::Lora(adapter(
            *rank,
            *alpha,
            targets,
            exp.seed + TASK_LORA_SEED_OFFSET,
        )),
    };
    FinetuneConfig {
        mode,
        security_vectors: arm.into(),
        train: train_config(exp, ft.learning_rate(), ft.epochs, ft.batch_size),
    }
}

impl From<Arm> for SecurityVectors {
    fn from(arm: Arm) -> Self {
        match arm {
            Arm::Off => SecurityVectors::Off,
            Arm::Active => SecurityVectors::Active,
        }
    }
}
