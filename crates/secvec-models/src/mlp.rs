//! SwiGLU feed-forward block.

use burn::module::Module;
use burn::tensor::{Tensor, backend::Backend};

use crate::kernels;

use crate::linear::Projection;
use crate::precision::Precision;

/// `down(silu(gate(x)) · up(x))`.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub gate_proj: Projection<B>,
    pub up_proj: Projection<B>,
    pub down_proj: Projection<B>,
}

impl<B: Backend> Mlp<B> {
    pub fn forward(&self, x: Tensor<B, 3>, precision: Precision) -> Tensor<B, 3> {
        let gate = self.gate_proj.forward(x.clone(), precision);
        let up = self.up_proj.forward(x, precision);
        self.down_proj.forward(kernels::swiglu(gate, up), precision)
    }
}
