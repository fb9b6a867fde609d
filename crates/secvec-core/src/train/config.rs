//! Training hyper-parameters.

use serde::{Deserialize, Serialize};

/// Learning-rate schedule after the warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    Linear,
    #[default]
    Cosine,
}

/// Hyper-parameters of one training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Peak learning rate.
    pub lr: f64,
    pub epochs: usize,
    /// Stop after this many optimizer steps (overrides `epochs` when set).
    pub max_steps: Option<usize>,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Decoupled weight decay (PyTorch's AdamW default is 0.01; burn's is 1e-4).
    pub weight_decay: f64,
    /// Adam epsilon (PyTorch: 1e-8; burn's default 1e-5).
    pub adam_eps: f64,
    pub beta1: f64,
    pub beta2: f64,
    /// Warm-up as a fraction of all steps (linear from 0).
    pub warmup_ratio: f64,
    pub schedule: Schedule,
    /// Clip the global gradient norm to this value.
    pub max_grad_norm: Option<f64>,
    /// Longer sequences are truncated (the response end is cut).
    pub max_len: usize,
    /// Seed of the data order (and of adapter dropout).
    pub seed: u64,
    /// Call [`TrainCallback::on_eval`](super::TrainCallback::on_eval) every this many steps.
    pub eval_every: Option<usize>,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Dynamic loss scaling, used only when the model computes in f16 (see
    /// [`secvec_models::Precision`]); bf16 and f32 need none.
    pub loss_scale: LossScaleConfig,
    /// Save the training state every few steps and resume from it (see
    /// [`super::resume`]). Not serialised: where a run keeps its state is not a
    /// hyper-parameter.
    #[serde(skip)]
    pub checkpoint: Option<super::resume::Checkpointing>,
}

/// Dynamic loss scaling for f16 training, with PyTorch `GradScaler`'s defaults: the loss is
/// multiplied by `scale` before the backward pass and the gradients divided by it after; a step
/// whose gradients overflow is skipped and the scale halved; after `growth_interval` good steps
/// in a row the scale doubles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossScaleConfig {
    pub init: f64,
    pub growth_interval: usize,
    /// Training fails after this many skipped steps in a row (the gradients are not finite at
    /// any scale: a real divergence, not an f16 overflow).
    pub max_consecutive_skips: usize,
}

impl Default for LossScaleConfig {
    fn default() -> Self {
        Self {
            init: 65536.0,
            growth_interval: 2000,
            max_consecutive_skips: 24,
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            lr: 1e-4,
            epochs: 1,
            max_steps: None,
            batch_size: 8,
            grad_accum: 1,
            weight_decay: 0.0,
            adam_eps: 1e-8,
            beta1: 0.9,
            beta2: 0.999,
            warmup_ratio: 0.0,
            schedule: Schedule::Constant,
            max_grad_norm: Some(1.0),
            max_len: 256,
            seed: 0,
            eval_every: None,
            progress: true,
            loss_scale: LossScaleConfig::default(),
            checkpoint: None,
        }
    }
}

impl TrainConfig {
    /// Checks ranges; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(format!("lr must be positive, got {}", self.lr));
        }
        if self.batch_size == 0 || self.grad_accum == 0 {
            return Err("batch_size and grad_accum must be positive".into());
        }
        if self.epochs == 0 && self.max_steps.is_none() {
            return Err("epochs must be positive (or set max_steps)".into());
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return Err(format!(
                "warmup_ratio must be in [0, 1), got {}",
                self.warmup_ratio
            ));
        }
        if self.max_len < 2 {
            return Err("max_len must be at least 2".into());
        }
        if let Some(n) = self.max_grad_norm
            && (n.is_nan() || n <= 0.0)
        {
            return Err(format!("max_grad_norm must be positive, got {n}"));
        }
        let ls = &self.loss_scale;
        if !(ls.init.is_finite() && ls.init > 0.0) {
            return Err(format!("loss_scale.init must be positive, got {}", ls.init));
        }
        if ls.growth_interval == 0 || ls.max_consecutive_skips == 0 {
            return Err(
                "loss_scale.growth_interval and loss_scale.max_consecutive_skips must be positive"
                    .into(),
            );
        }
        Ok(())
    }

    /// Learning rate at optimizer step `step` (0-based) of `total`.
    pub fn lr_at(&self, step: usize, total: usize) -> f64 {
        let warmup = (self.warmup_ratio * total as f64).ceil() as usize;
        if step < warmup {
            return self.lr * (step + 1) as f64 / warmup as f64;
        }
        let decay_steps = total.saturating_sub(warmup).max(1);
        let progress = (step - warmup) as f64 / decay_steps as f64;
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Linear => self.lr * (1.0 - progress),
            Schedule::Cosine => self.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        let cfg = TrainConfig {
            lr: 1.0,
            warmup_ratio: 0.1,
            schedule: Schedule::Cosine,
            ..TrainConfig::default()
        };
        assert!((cfg.lr_at(0, 100) - 0.1).abs() < 1e-12);
        assert!((cfg.lr_at(9, 100) - 1.0).abs() < 1e-12);
        assert!((cfg.lr_at(10, 100) - 1.0).abs() < 1e-12);
        assert!(cfg.lr_at(99, 100) < 0.01);
        let lin = TrainConfig {
            schedule: Schedule::Linear,
            warmup_ratio: 0.0,
            lr: 2.0,
            ..TrainConfig::default()
        };
        assert!((lin.lr_at(50, 100) - 1.0).abs() < 1e-12);
        assert!(
            TrainConfig {
                lr: 0.0,
                ..TrainConfig::default()
            }
            .validate()
            .is_err()
        );
    }
}
