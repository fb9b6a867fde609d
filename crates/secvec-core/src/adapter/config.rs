//! Adapter configuration.

use serde::{Deserialize, Serialize};

use secvec_models::{ProjectionId, ProjectionKind};

/// How the `A` matrix is initialised (`B` always starts at zero, so a new adapter leaves the
/// model's outputs unchanged).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub enum AdapterInit {
    /// PEFT's default: Kaiming-uniform with `a = sqrt(5)`, i.e. `U(-1/sqrt(d_in), 1/sqrt(d_in))`.
    #[default]
    KaimingUniform,
    /// `N(0, (1/r)²)`, PEFT's `init_lora_weights="gaussian"`.
    Gaussian,
}

/// Configuration of one low-rank adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdapterConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Projections to adapt, by Hugging Face name (`q_proj`, `v_proj`, ...).
    pub targets: Vec<String>,
    /// Layers to adapt (all when `None`), PEFT's `layers_to_transform`.
    pub layers: Option<Vec<usize>>,
    pub init: AdapterInit,
    /// Seed of the `A` initialisation.
    pub seed: u64,
    /// Scale by `alpha / sqrt(r)` instead of `alpha / r`.
    pub use_rslora: bool,
}

impl Default for AdapterConfig {
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            targets: vec!["q_proj".into(), "v_proj".into()],
            layers: None,
            init: AdapterInit::KaimingUniform,
            seed: 0,
            use_rslora: false,
        }
    }
}

impl AdapterConfig {
    /// The factor applied to `B A x`.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }

    /// Parsed target kinds; an unknown name is an error.
    pub fn target_kinds(&self) -> Result<Vec<ProjectionKind>, String> {
        self.targets
            .iter()
            .map(|t| {
                ProjectionKind::from_hf_name(t).ok_or_else(|| {
                    format!(
                        "unknown target module `{t}` (expected one of q_proj, k_proj, v_proj, \
                         o_proj, gate_proj, up_proj, down_proj)"
                    )
                })
            })
            .collect()
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<(), String> {
        if self.rank == 0 {
            return Err("rank must be positive".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        if !self.alpha.is_finite() {
            return Err("alpha must be finite".into());
        }
        if self.targets.is_empty() {
            return Err("targets must name at least one projection".into());
        }
        self.target_kinds().map(|_| ())
    }

    /// Whether this adapter applies to projection `id`.
    pub fn applies_to(&self, id: ProjectionId) -> bool {
        let kind_ok = self.targets.iter().any(|t| t == id.kind.hf_name());
        let layer_ok = self.layers.as_ref().is_none_or(|l| l.contains(&id.layer));
        kind_ok && layer_ok
    }
}
