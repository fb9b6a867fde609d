//! The one linear type every projection of the decoder goes through, and the low-rank adapters
//! that can be attached to it.
//!
//! This is the seam that `secvec-core` builds security vectors and task LoRAs on: every
//! projection (`q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`, `down_proj`) of
//! every layer is a [`Projection`] addressable by [`ProjectionId`], and holds any number of named
//! [`LoraAdapter`]s, each of which can be switched on or off independently.

use std::fmt;

use burn::module::{Module, Param};
use burn::tensor::{Distribution, Tensor, backend::Backend};

use crate::precision::Precision;

/// The seven projections of a Llama-family decoder layer, named as in Hugging Face checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProjectionKind {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl ProjectionKind {
    pub const ALL: [ProjectionKind; 7] = [
        ProjectionKind::Q,
        ProjectionKind::K,
        ProjectionKind::V,
        ProjectionKind::O,
        ProjectionKind::Gate,
        ProjectionKind::Up,
        ProjectionKind::Down,
    ];

    /// The Hugging Face / PEFT module name (`q_proj`, ..).
    pub fn hf_name(self) -> &'static str {
        match self {
            ProjectionKind::Q => "q_proj",
            ProjectionKind::K => "k_proj",
            ProjectionKind::V => "v_proj",
            ProjectionKind::O => "o_proj",
            ProjectionKind::Gate => "gate_proj",
            ProjectionKind::Up => "up_proj",
            ProjectionKind::Down => "down_proj",
        }
    }

    /// The parent module in Hugging Face key names (`self_attn` or `mlp`).
    pub fn hf_parent(self) -> &'static str {
        match self {
            ProjectionKind::Q | ProjectionKind::K | ProjectionKind::V | ProjectionKind::O => {
                "self_attn"
            }
            ProjectionKind::Gate | ProjectionKind::Up | ProjectionKind::Down => "mlp",
        }
    }

    /// Parses a Hugging Face / PEFT module name.
    pub fn from_hf_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.hf_name() == name)
    }
}

impl fmt::Display for ProjectionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hf_name())
    }
}

/// One projection of the model: decoder layer and kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProjectionId {
    pub layer: usize,
    pub kind: ProjectionKind,
}

impl ProjectionId {
    /// The Hugging Face module path, e.g. `model.layers.3.self_attn.q_proj`.
    pub fn hf_path(&self) -> String {
        format!(
            "model.layers.{}.{}.{}",
            self.layer,
            self.kind.hf_parent(),
            self.kind.hf_name()
        )
    }
}

impl fmt::Display for ProjectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hf_path())
    }
}

/// A low-rank adapter `ΔW x = scaling · B A x`, computed as `(x·A)·B` so the dense delta is never
/// formed. Shapes follow Burn's row-vector convention: `a` is `[d_in, r]`, `b` is `[r, d_out]`
/// (PEFT stores the transposes, `lora_A.weight` `[r, d_in]` and `lora_B.weight` `[d_out, r]`).
#[derive(Module, Debug)]
pub struct LoraAdapter<B: Backend> {
    /// Adapter name, e.g. `security` or `task` (PEFT's adapter name).
    pub name: String,
    pub a: Param<Tensor<B, 2>>,
    pub b: Param<Tensor<B, 2>>,
    /// `alpha / r` (or `alpha / sqrt(r)` with rsLoRA).
    pub scaling: f64,
    /// Dropout probability applied to the adapter's input while autodiff is enabled.
    pub dropout: f64,
    /// Whether the adapter takes part in the forward pass.
    pub active: bool,
}

impl<B: Backend> LoraAdapter<B> {
    /// The adapter's rank.
    pub fn rank(&self) -> usize {
        self.a.dims()[1]
    }

    /// The adapter's contribution for a 2-D f32 input `[n, d_in]`, computed in `precision`
    /// and returned in f32.
    pub fn delta(&self, x: Tensor<B, 2>, precision: Precision) -> Tensor<B, 2> {
        let x = if self.dropout > 0.0 && B::ad_enabled(&x.device()) {
            let keep = 1.0 - self.dropout;
            let mask = x.random_like(Distribution::Bernoulli(keep));
            x * mask / keep
        } else {
            x
        };
        let p = precision;
        if p == Precision::F32 {
            // The scaling goes on the `[n, r]` intermediate: r columns instead of d_out.
            let xa = crate::kernels::matmul(x, self.a.val()).mul_scalar(self.scaling);
            return crate::kernels::matmul(xa, self.b.val());
        }
        let xa = p.to_compute(x).matmul(p.to_compute(self.a.val()));
        p.to_f32(xa.matmul(p.to_compute(self.b.val())))
            .mul_scalar(self.scaling)
    }
}

/// A linear projection `y = x W + b` with optional bias and attached low-rank adapters.
///
/// `weight` is stored `[d_in, d_out]` (Burn's convention; a PyTorch `nn.Linear.weight` is the
/// transpose, and the loaders transpose once on load).
#[derive(Module, Debug)]
pub struct Projection<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    pub adapters: Vec<LoraAdapter<B>>,
}

impl<B: Backend> Projection<B> {
    /// Input features.
    pub fn d_in(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Output features.
    pub fn d_out(&self) -> usize {
        self.weight.dims()[1]
    }

    /// Applies the projection to `[batch, seq, d_in]`; the product runs in `precision`, the
    /// output is f32 (see [`Precision`]).
    pub fn forward(&self, x: Tensor<B, 3>, precision: Precision) -> Tensor<B, 3> {
        let [batch, seq, d_in] = x.dims();
        // One 2-D GEMM over all tokens is the fastest path on every backend.
        let x = x.reshape([batch * seq, d_in]);
        let mut y = precision.matmul(x.clone(), self.weight.val());
        if let Some(bias) = &self.bias {
            y = y + precision.to_f32(bias.val()).unsqueeze::<2>();
        }
        for adapter in self.adapters.iter().filter(|a| a.active) {
            y = y + adapter.delta(x.clone(), precision);
        }
        y.reshape([batch, seq, self.d_out()])
    }

    /// The adapter of that name, if attached.
    pub fn adapter(&self, name: &str) -> Option<&LoraAdapter<B>> {
        self.adapters.iter().find(|a| a.name == name)
    }

    /// The adapter of that name, mutably.
    pub fn adapter_mut(&mut self, name: &str) -> Option<&mut LoraAdapter<B>> {
        self.adapters.iter_mut().find(|a| a.name == name)
    }
}
