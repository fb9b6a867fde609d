//! Lisa: bi-state optimization with a proximal term, a fine-tuning-stage defence.
//!
//! Source: Huang et al., *Lisa: Lazy Safety Alignment for Large Language Models against Harmful
//! Fine-tuning Attack*, NeurIPS 2024 (arXiv 2405.18641), and its reference code
//! (github.com/git-disl/Lisa, `trainer.py`, `ADMMTrainer`). The defender keeps fine-tuning on its
//! own alignment ("guide") data while it fine-tunes on the user's data: the optimizer alternates
//! between `align_steps` steps on alignment data and `finetune_steps` steps on the user's data,
//! and in each state the loss carries the proximal term `ρ/2 · ‖w − w̃‖²`, where `w̃` is the
//! trainable weights at the last switch of state (where the other state left them), so that
//! neither state drifts far from the consensus of both.
//!
//! What the reference code does and this follows:
//! - The run starts in the alignment state; the alignment batches *replace* user batches, so
//!   the number of optimizer steps is that of plain fine-tuning (the user's data is seen
//!   `finetune_steps / (align_steps + finetune_steps)` as often).
//! - One optimizer (its moments included) serves both states.
//! - The proximal term is left out for the first tenth of the steps (`proximal_after`; the
//!   reference observed it hurts convergence early).
//! - The proximal term is part of the loss, so gradient clipping sees it.
//! - Hyper-parameters of the paper's runs: ρ = 1, 100 alignment and 900 fine-tuning steps per
//!   cycle, LoRA, lr 1e-5, 10 000 alignment samples (BeaverTails refusals).
//!
//! What we chose: cycles of 10 + 90 steps by default (the paper's 1:9 ratio; its 1000-step
//! cycle is longer than the runs this project makes on a CPU, ~125–175 steps); the alignment
//! data is the alignment stage's own (its refusals and benign answers), batched and shuffled
//! like the user's data with a seed of its own; combined with security vectors (the `active` arm;
//! the combination is not in the paper) the vectors stay on in both states by default, so the
//! alignment steps also see the harmful behaviour the vectors supply, or, with
//! `vectors_when_aligning: false`, they are switched off for the alignment steps and the
//! alignment data trains the model as it is used at inference; a killed run saves its
//! checkpoints only at switches of state, where `w̃` is the current weights, so that the resumed
//! run is bit-identical to an uninterrupted one without storing `w̃`.

use std::collections::HashMap;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use secvec_models::Llama;

use super::Defence;
use crate::error::{CoreError, Result};
use crate::train::phases::{FinetuneConfig, SecurityVectors, finetune_with};
use crate::train::{TrainCallback, TrainExample, TrainReport};

/// Lisa's hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LisaConfig {
    /// Optimizer steps on the alignment data per cycle (the reference's `alignment_step`, K1).
    pub align_steps: usize,
    /// Optimizer steps on the user's data per cycle (`finetune_step`, K2).
    pub finetune_steps: usize,
    /// Intensity ρ of the proximal term (`rho`); 0 alternates without it.
    pub rho: f64,
    /// The proximal term is added only after this fraction of the steps.
    pub proximal_after: f64,
    /// With security vectors active (the `active` arm): whether they stay on during the
    /// alignment steps (`true`, the default) or are switched off for them and back on for the
    /// user's steps (`false`: the alignment data then trains the model as it is used at
    /// inference, without the vectors). Without active vectors it changes nothing. Written to
    /// fingerprints only when `false`, so the fingerprints of earlier runs stay valid.
    #[serde(skip_serializing_if = "is_true")]
    pub vectors_when_aligning: bool,
}

fn is_true(b: &bool) -> bool {
    *b
}

impl Default for LisaConfig {
    fn default() -> Self {
        Self {
            align_steps: 10,
            finetune_steps: 90,
            rho: 1.0,
            proximal_after: 0.1,
            vectors_when_aligning: true,
        }
    }
}

impl LisaConfig {
    /// Checks ranges; the message names the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.align_steps == 0 {
            return Err("align_steps must be positive (0 is plain fine-tuning)".into());
        }
        if self.finetune_steps == 0 {
            return Err(
                "finetune_steps must be positive (0 never trains on the user's data)".into(),
            );
        }
        if !(self.rho >= 0.0 && self.rho.is_finite()) {
            return Err(format!("rho must be finite and ≥ 0, got {}", self.rho));
        }
        if !(0.0..=1.0).contains(&self.proximal_after) {
            return Err(format!(
                "proximal_after must be in [0, 1], got {}",
                self.proximal_after
            ));
        }
        Ok(())
    }

    /// Whether optimizer step `step` (from 0) trains on the alignment data.
    pub fn aligning(&self, step: usize) -> bool {
        step % (self.align_steps + self.finetune_steps) < self.align_steps
    }

    /// Whether the state changes at step `step` (so `w̃` is taken before it).
    pub fn switches_at(&self, step: usize) -> bool {
        step > 0 && self.aligning(step) != self.aligning(step - 1)
    }

    /// Whether step `step` of `total` carries the proximal term.
    pub fn proximal_at(&self, step: usize, total: usize) -> bool {
        self.rho > 0.0 && step as f64 > self.proximal_after * total as f64
    }
}

/// Lisa for the trainer: the alignment data beside the user's, and the hyper-parameters.
pub(crate) struct BiState<'a> {
    pub guide: &'a [TrainExample],
    pub cfg: &'a LisaConfig,
    /// The security vectors are switched off for the alignment steps and on for the user's.
    pub toggle_vectors: bool,
}

/// Phase 2 under Lisa: [`finetune`](crate::train::finetune) on `data` (vectors active or off as
/// `cfg` says, a task LoRA or the base weights), alternating with steps on the defender's
/// alignment data `guide` and pulled towards the last switch's weights. Returns the model with
/// the vectors off, as `finetune` does.
pub fn finetune_lisa<B: AutodiffBackend>(
    model: Llama<B>,
    data: &[TrainExample],
    guide: &[TrainExample],
    pad_id: u32,
    cfg: &FinetuneConfig,
    lisa: &LisaConfig,
    callback: &mut dyn TrainCallback<B>,
) -> Result<(Llama<B>, TrainReport)> {
    lisa.validate()
        .map_err(|e| CoreError::InvalidConfig(format!("lisa: {e}")))?;
    if guide.is_empty() {
        return Err(CoreError::InvalidConfig(
            "lisa: no alignment data to alternate with".into(),
        ));
    }
    finetune_with(
        model,
        data,
        pad_id,
        cfg,
        &Defence::Lisa(BiState {
            guide,
            cfg: lisa,
            toggle_vectors: cfg.security_vectors == SecurityVectors::Active
                && !lisa.vectors_when_aligning,
        }),
        callback,
    )
}

/// The trainable weights of `model`, flattened, by parameter: `w̃`.
pub(crate) fn snapshot<B: AutodiffBackend>(
    model: &Llama<B>,
) -> HashMap<ParamId, Tensor<B::InnerBackend, 1>> {
    struct Snap<B: AutodiffBackend>(HashMap<ParamId, Tensor<B::InnerBackend, 1>>);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Snap<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let t = param.val();
            if t.is_require_grad() {
                let n = t.shape().num_elements();
                self.0.insert(param.id, t.inner().reshape([n]));
            }
        }
    }
    let mut snap = Snap::<B>(HashMap::new());
    model.visit(&mut snap);
    snap.0
}

/// `‖w − w̃‖²` over the trainable weights, on the autodiff graph (its gradient is `2(w − w̃)`).
pub(crate) fn squared_drift<B: AutodiffBackend>(
    model: &Llama<B>,
    anchor: &HashMap<ParamId, Tensor<B::InnerBackend, 1>>,
) -> Option<Tensor<B, 1>> {
    struct Drift<'a, B: AutodiffBackend> {
        anchor: &'a HashMap<ParamId, Tensor<B::InnerBackend, 1>>,
        sum: Option<Tensor<B, 1>>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Drift<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let t = param.val();
            if !t.is_require_grad() {
                return;
            }
            if let Some(a) = self.anchor.get(&param.id) {
                let n = t.shape().num_elements();
                let d = t.reshape([n]) - Tensor::from_inner(a.clone());
                let s = d.clone().mul(d).sum();
                self.sum = Some(match self.sum.take() {
                    Some(acc) => acc + s,
                    None => s,
                });
            }
        }
    }
    let mut drift = Drift { anchor, sum: None };
    model.visit(&mut drift);
    drift.sum
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default `vectors_when_aligning` is not written, so that the fingerprints of runs made
    /// before the field existed stay valid; `false` is written.
    #[test]
    fn the_default_vector_choice_is_left_out_of_fingerprints() {
        let c = LisaConfig::default();
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(
            json,
            r#"{"align_steps":10,"finetune_steps":90,"rho":1.0,"proximal_after":0.1}"#
        );
        let off = LisaConfig {
            vectors_when_aligning: false,
            ..c
        };
        let json = serde_json::to_string(&off).unwrap();
        assert!(
            json.ends_with(r#""vectors_when_aligning":false}"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<LisaConfig>(&json).unwrap(), off);
    }

    #[test]
    fn states_alternate_in_cycles_starting_with_alignment() {
        let c = LisaConfig {
            align_steps: 2,
            finetune_steps: 3,
            ..LisaConfig::default()
        };
        let states: String = (0..11)
            .map(|s| if c.aligning(s) { 'A' } else { 'F' })
            .collect();
        assert_eq!(states, "AAFFFAAFFFA");
        let switches: Vec<usize> = (0..11).filter(|&s| c.switches_at(s)).collect();
        assert_eq!(switches, [2, 5, 7, 10]);
        // The proximal term from after the first tenth on: step 3 of 20 has it, step 2 not.
        assert!(!c.proximal_at(2, 20));
        assert!(c.proximal_at(3, 20));
        let off = LisaConfig { rho: 0.0, ..c };
        assert!(!off.proximal_at(15, 20));
    }

    #[test]
    fn bad_settings_are_errors_naming_the_field() {
        for (c, field) in [
            (
                LisaConfig {
                    align_steps: 0,
                    ..LisaConfig::default()
                },
                "align_steps",
            ),
            (
                LisaConfig {
                    finetune_steps: 0,
                    ..LisaConfig::default()
                },
                "finetune_steps",
            ),
            (
                LisaConfig {
                    rho: f64::NAN,
                    ..LisaConfig::default()
                },
                "rho",
            ),
            (
                LisaConfig {
                    proximal_after: 1.5,
                    ..LisaConfig::default()
                },
                "proximal_after",
            ),
        ] {
            let e = c.validate().unwrap_err();
            assert!(e.contains(field), "{e}");
        }
        assert!(LisaConfig::default().validate().is_ok());
    }
}
