//! The three phases of the method as library calls, each usable alone, after an optional
//! alignment stage for a model that is not safety-aligned:
//!
//! 0. [`train_alignment`]: an `align` LoRA learns refusals of harmful requests and answers to
//!    benign ones; [`merge_adapter`](crate::adapter::merge_adapter)`(model, ALIGN)` then folds it
//!    into the base weights, which become "the aligned model";
//! 1. [`train_security_vectors`]: the LLM and every other adapter frozen, only the `security`
//!    adapter learns the harmful data, so that LLM + vectors already behaves harmfully;
//! 2. [`finetune`]: the user's data with the vectors [`SecurityVectors::Active`] and frozen (or
//!    [`SecurityVectors::Off`], the undefended baseline); the base weights (full fine-tuning, as in
//!    the paper) or a `task` LoRA learn;
//! 3. inference with the vectors off: [`set_security_vectors`]`(model, false)` — what
//!    [`finetune`] leaves behind.

use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use secvec_models::Llama;

use super::batch::TrainExample;
use super::config::{Schedule, TrainConfig};
use super::trainer::{TrainCallback, TrainReport, train_with};
use crate::adapter::{
    ALIGN, AdapterConfig, SECURITY, TASK, adapter_names, add_adapter, set_adapter_active,
    set_adapter_trainable, set_base_trainable,
};
use crate::defence::Defence;
use crate::error::{CoreError, Result};
use crate::steering::{set_steering_active, steering_names};

/// Whether the security vectors take part in fine-tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum SecurityVectors {
    /// Active and frozen during the forward pass (the defence).
    #[default]
    Active,
    /// Not used (the undefended baseline).
    Off,
}

/// Phase 1 settings. Defaults follow the PyTorch + PEFT reference run on SmolLM2
/// (README, "The PyTorch prototype"): rank 8, alpha 16 on all seven projections, lr 5e-4
/// cosine, 3 epochs, batch 8.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityVectorConfig {
    pub adapter: AdapterConfig,
    pub train: TrainConfig,
}

/// All seven projections by Hugging Face name (the reference run's adapter targets).
pub fn all_targets() -> Vec<String> {
    [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    .map(String::from)
    .to_vec()
}

impl Default for SecurityVectorConfig {
    fn default() -> Self {
        Self {
            adapter: AdapterConfig {
                rank: 8,
                alpha: 16.0,
                targets: all_targets(),
                ..AdapterConfig::default()
            },
            train: TrainConfig {
                lr: 5e-4,
                epochs: 3,
                batch_size: 8,
                schedule: Schedule::Cosine,
                ..TrainConfig::default()
            },
        }
    }
}

/// Stage 0 settings. Defaults follow the alignment of the PyTorch + PEFT prototype run on SmolLM2
/// (README, "The PyTorch prototype"): rank 16, alpha 32 on all seven projections, lr 5e-4 cosine, 2 epochs,
/// batch 8.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlignConfig {
    pub adapter: AdapterConfig,
    pub train: TrainConfig,
}

impl Default for AlignConfig {
    fn default() -> Self {
        Self {
            adapter: AdapterConfig {
                rank: 16,
                alpha: 32.0,
                targets: all_targets(),
                ..AdapterConfig::default()
            },
            train: TrainConfig {
                lr: 5e-4,
                epochs: 2,
                batch_size: 8,
                schedule: Schedule::Cosine,
                ..TrainConfig::default()
            },
        }
    }
}

/// What fine-tuning trains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FinetuneMode {
    /// Every base weight (the paper's setting).
    Full,
    /// A `task` LoRA with this configuration (attached if absent).
    Lora(AdapterConfig),
}

impl FinetuneMode {
    /// The default learning rate of the mode: 2e-5 for full fine-tuning, 2e-4 for a task LoRA
    /// (the prototype's).
    pub fn default_lr(&self) -> f64 {
        match self {
            FinetuneMode::Full => 2e-5,
            FinetuneMode::Lora(_) => 2e-4,
        }
    }
}

/// Phase 2 settings. Defaults follow the reference run's LoRA attack (rank 8, alpha 16, all seven
/// projections, lr 2e-4, one epoch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneConfig {
    pub mode: FinetuneMode,
    pub security_vectors: SecurityVectors,
    pub train: TrainConfig,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        Self {
            mode: FinetuneMode::Lora(AdapterConfig {
                rank: 8,
                alpha: 16.0,
                targets: all_targets(),
                seed: 1,
                ..AdapterConfig::default()
            }),
            security_vectors: SecurityVectors::Active,
            train: TrainConfig {
                lr: 2e-4,
                epochs: 1,
                batch_size: 8,
                schedule: Schedule::Cosine,
                ..TrainConfig::default()
            },
        }
    }
}

/// Freezes everything: base weights and every adapter.
fn freeze_all<B: AutodiffBackend>(model: &mut Llama<B>) -> Result<()> {
    set_base_trainable(model, false);
    for name in adapter_names(model) {
        set_adapter_trainable(model, &name, false)?;
    }
    Ok(())
}

/// Phase 1: attaches the `security` adapter (if absent), trains only it on harmful
/// (prompt → compliant answer) examples, and returns the model with the vectors attached,
/// frozen and active. Other adapters are switched off while the vectors are made.
pub fn train_security_vectors<B: AutodiffBackend>(
    model: Llama<B>,
    harmful: &[TrainExample],
    pad_id: u32,
    cfg: &SecurityVectorConfig,
    callback: &mut dyn TrainCallback<B>,
) -> Result<(Llama<B>, TrainReport)> {
    train_only(
        model,
        SECURITY,
        &cfg.adapter,
        &cfg.train,
        harmful,
        pad_id,
        callback,
    )
}

/// Stage 0: attaches the `align` adapter (if absent), trains only it on refusals of harmful
/// requests and answers to benign ones, and returns the model with it attached, frozen and
/// active — not merged, so that it can be saved in PEFT's format first;
/// [`merge_adapter`](crate::adapter::merge_adapter)`(model, ALIGN)` folds it into the base.
pub fn train_alignment<B: AutodiffBackend>(
    model: Llama<B>,
    examples: &[TrainExample],
    pad_id: u32,
    cfg: &AlignConfig,
    callback: &mut dyn TrainCallback<B>,
) -> Result<(Llama<B>, TrainReport)> {
    train_only(
        model,
        ALIGN,
        &cfg.adapter,
        &cfg.train,
        examples,
        pad_id,
        callback,
    )
}

/// Attaches adapter `name` (if absent) and trains only it, with the base weights and every other
/// adapter frozen and switched off; the others are switched back on afterwards and `name` is
/// left frozen and active.
fn train_only<B: AutodiffBackend>(
    model: Llama<B>,
    name: &str,
    adapter: &AdapterConfig,
    train_cfg: &TrainConfig,
    data: &[TrainExample],
    pad_id: u32,
    callback: &mut dyn TrainCallback<B>,
) -> Result<(Llama<B>, TrainReport)> {
    train_only_with(
        model,
        name,
        adapter,
        train_cfg,
        data,
        pad_id,
        &Defence::None,
        callback,
    )
}

/// [`train_only`] under a defence that changes how training trains (Vaccine's alignment).
#[allow(clippy::too_many_arguments)]
pub(crate) fn train_only_with<B: AutodiffBackend>(
    mut model: Llama<B>,
    name: &str,
    adapter: &AdapterConfig,
    train_cfg: &TrainConfig,
    data: &[TrainExample],
    pad_id: u32,
    defence: &Defence<'_>,
    callback: &mut dyn TrainCallback<B>,
) -> Result<(Llama<B>, TrainReport)> {
    if !adapter_names(&model).iter().any(|n| n == name) {
        add_adapter(&mut model, name, adapter)?;
    }
    freeze_all(&mut model)?;
    let mut switched_off = Vec::new();
    for other in adapter_names(&model) {
        if other != name {
            set_adapter_active(&mut model, &other, false)?;
            switched_off.push(other);
        }
    }
    set_adapter_active(&mut model, name, true)?;
    set_adapter_trainable(&mut model, name, true)?;
    let (mut model, report) = train_with(model, data, pad_id, train_cfg, defence, callback)?;
    set_adapter_trainable(&mut model, name, false)?;
    for other in switched_off {
        set_adapter_active(&mut model, &other, true)?;
    }
    Ok((model, report))
}

/// Phase 2: fine-tunes on `data` with the security vectors active and frozen (or off), training
/// the base weights or a `task` LoRA. Returns the model with the vectors **off**, ready for
/// inference (phase 3).
pub fn finetune<B: AutodiffBackend>(
    model: Llama<B>,
    data: &[TrainExample],
    pad_id: u32,
    cfg: &FinetuneConfig,
    callback: &mut dyn TrainCallback<B>,
) -> Result<(Llama<B>, TrainReport)> {
    finetune_with(model, data, pad_id, cfg, &Defence::None, callback)
}

/// [`finetune`], under Lisa's bi-state optimization when `defence` asks
/// ([`crate::defence::lisa::finetune_lisa`]).
pub(crate) fn finetune_with<B: AutodiffBackend>(
    mut model: Llama<B>,
    data: &[TrainExample],
    pad_id: u32,
    cfg: &FinetuneConfig,
    defence: &Defence<'_>,
    callback: &mut dyn TrainCallback<B>,
) -> Result<(Llama<B>, TrainReport)> {
    let has_vectors = has_security_vectors(&model);
    if cfg.security_vectors == SecurityVectors::Active && !has_vectors {
        return Err(CoreError::NoSuchAdapter {
            name: SECURITY.into(),
        });
    }
    if let FinetuneMode::Lora(adapter) = &cfg.mode
        && !adapter_names(&model).iter().any(|n| n == TASK)
    {
        add_adapter(&mut model, TASK, adapter)?;
    }
    freeze_all(&mut model)?;
    if has_vectors {
        set_security_vectors(&mut model, cfg.security_vectors == SecurityVectors::Active)?;
    }
    match cfg.mode {
        FinetuneMode::Full => set_base_trainable(&mut model, true),
        FinetuneMode::Lora(_) => {
            set_adapter_active(&mut model, TASK, true)?;
            set_adapter_trainable(&mut model, TASK, true)?;
        }
    }
    let (mut model, report) = train_with(model, data, pad_id, &cfg.train, defence, callback)?;
    freeze_all(&mut model)?;
    if has_vectors {
        set_security_vectors(&mut model, false)?;
    }
    Ok((model, report))
}

/// Whether the model holds security vectors: a LoRA adapter or activation-steering vectors
/// ([`crate::steering`]) named [`SECURITY`].
pub fn has_security_vectors<B: burn::tensor::backend::Backend>(model: &Llama<B>) -> bool {
    adapter_names(model).iter().any(|n| n == SECURITY)
        || steering_names(model).iter().any(|n| n == SECURITY)
}

/// Switches the security vectors on (to reproduce the harmful behaviour) or off (inference),
/// of either kind (LoRA adapter, steering vectors); returns how many modules were switched.
pub fn set_security_vectors<B: burn::tensor::backend::Backend>(
    model: &mut Llama<B>,
    on: bool,
) -> Result<usize> {
    let mut n = 0;
    if adapter_names(model).iter().any(|n| n == SECURITY) {
        n += set_adapter_active(model, SECURITY, on)?;
    }
    if steering_names(model).iter().any(|n| n == SECURITY) {
        n += set_steering_active(model, SECURITY, on)?;
    }
    if n == 0 {
        return Err(CoreError::NoSuchAdapter {
            name: SECURITY.into(),
        });
    }
    Ok(n)
}
