//! Vaccine: perturbation-aware alignment, an alignment-stage defence.
//!
//! Source: Huang et al., *Vaccine: Perturbation-aware Alignment for Large Language Models
//! against Harmful Fine-tuning Attack*, NeurIPS 2024 (arXiv 2402.01109), and its reference code
//! (github.com/git-disl/Vaccine; the same trainer ships in github.com/git-disl/Lisa, `trainer.py`,
//! `BaseTrainer` with the `vaccine` optimizer). Harmful fine-tuning breaks alignment by drifting
//! the hidden embeddings of the alignment data ("harmful embedding drift"); Vaccine aligns the
//! model so that its alignment loss stays low under the worst small drift. Each step makes two
//! passes over the batch:
//!
//! 1. a forward and backward pass whose only use is the gradient `g_l` of the loss with respect
//!    to the output of every layer's attention block;
//! 2. a forward pass with the perturbation `e_l = ρ · g_l / ‖g‖` (`‖g‖` the norm over all
//!    layers together) added to those outputs, whose gradient updates the trainable weights.
//!
//! The perturbations exist only during alignment; the aligned model runs without them.
//!
//! What the reference code does and this follows: the perturbation is added to the output of
//! the attention module (`LlamaAttention`, before the residual sum) of every layer; one norm
//! over all layers; the first pass's weight gradients are discarded. The reference script takes
//! ρ as an argument and aligns a LoRA at lr 1e-3 (BeaverTails refusals). What we chose: ρ = 2 by
//! default (a value the paper's sweep covers; not checked against its final table); the
//! perturbation is computed per micro-batch; the step's logged loss is the perturbed pass's.

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use serde::{Deserialize, Serialize};

use secvec_models::Llama;

use crate::error::{CoreError, Result};
use crate::train::batch::Batch;
use crate::train::loss::response_nll_sum_perturbed;
use crate::train::phases::{AlignConfig, train_only_with};
use crate::train::{TrainCallback, TrainExample, TrainReport};

use super::Defence;

/// Vaccine's hyper-parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaccineConfig {
    /// Norm ρ of the perturbation over all layers' attention outputs.
    pub rho: f64,
}

impl Default for VaccineConfig {
    fn default() -> Self {
        Self { rho: 2.0 }
    }
}

impl VaccineConfig {
    /// Checks ranges; the message names the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(self.rho > 0.0 && self.rho.is_finite()) {
            return Err(format!(
                "rho must be positive and finite, got {} (0 is plain alignment)",
                self.rho
            ));
        }
        Ok(())
    }
}

/// Stage 0 under Vaccine: [`train_alignment`](crate::train::train_alignment) with every step's
/// loss taken under the worst attention-output perturbation of norm `vaccine.rho`.
pub fn train_alignment_vaccine<B: AutodiffBackend>(
    model: Llama<B>,
    examples: &[TrainExample],
    pad_id: u32,
    cfg: &AlignConfig,
    vaccine: &VaccineConfig,
    callback: &mut dyn TrainCallback<B>,
) -> Result<(Llama<B>, TrainReport)> {
    vaccine
        .validate()
        .map_err(|e| CoreError::InvalidConfig(format!("vaccine: {e}")))?;
    train_only_with(
        model,
        crate::adapter::ALIGN,
        &cfg.adapter,
        &cfg.train,
        examples,
        pad_id,
        &Defence::Vaccine(vaccine),
        callback,
    )
}

/// Vaccine's two passes over `batch`: the response NLL sum under the perturbation (on the
/// autodiff graph, for the weights' gradient), and `‖g‖`, the norm of the unperturbed loss's
/// gradient with respect to the attention outputs.
pub fn perturbed_nll_sum<B: AutodiffBackend>(
    model: &Llama<B>,
    batch: &Batch<B>,
    rho: f64,
) -> (Tensor<B, 1>, f64) {
    let [b, len] = batch.ids.dims();
    let hidden = model.embed_tokens.val().dims()[1];
    let device = batch.ids.device();
    let probes: Vec<Tensor<B, 3>> = (0..model.layers.len())
        .map(|_| Tensor::<B, 3>::zeros([b, len, hidden], &device).require_grad())
        .collect();
    let grads = response_nll_sum_perturbed(model, batch, &probes).backward();
    let g: Vec<_> = probes
        .iter()
        .map(|p| {
            p.grad(&grads)
                .unwrap_or_else(|| Tensor::zeros([b, len, hidden], &device))
        })
        .collect();
    // One read from the device for all layers.
    let norm = g
        .iter()
        .map(|g| g.clone().powi_scalar(2).sum())
        .reduce(|a, b| a + b)
        .map_or(0.0, |s| s.into_scalar().elem::<f64>())
        .sqrt();
    let scale = rho / (norm + 1e-7);
    let e: Vec<Tensor<B, 3>> = g
        .into_iter()
        .map(|g| Tensor::from_inner(g.mul_scalar(scale)))
        .collect();
    (response_nll_sum_perturbed(model, batch, &e), norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rho_must_be_positive_and_finite() {
        for rho in [0.0, -1.0, f64::INFINITY, f64::NAN] {
            let e = VaccineConfig { rho }.validate().unwrap_err();
            assert!(e.contains("rho"), "{e}");
        }
        assert!(VaccineConfig::default().validate().is_ok());
    }
}
