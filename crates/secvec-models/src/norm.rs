//! Root-mean-square layer normalisation.

use burn::module::{Module, Param};
use burn::tensor::{Tensor, backend::Backend};

use crate::precision::Precision;

/// `y = x / sqrt(mean(x²) + eps) · weight` over the last dimension.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// Computed in f32 (`precision` only says whether the weight may be stored in half, see
    /// [`Llama::with_half_weights`](crate::Llama::with_half_weights)).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>, precision: Precision) -> Tensor<B, D> {
        crate::kernels::rms_norm(x, precision.to_f32(self.weight.val()), self.eps)
    }
}
