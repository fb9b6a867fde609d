//! Activation-steering vectors: a direction added to the residual stream after a decoder layer,
//! `h ← h + coefficient · v` at every position. The second kind of security vector (issue #14;
//! "preventative steering", Chen et al. 2025, *Persona Vectors*, arXiv 2507.21509): added while
//! the model is fine-tuned, removed at inference. Named and switchable like LoRA adapters, so
//! several can be attached and each turned on or off; the vector is frozen (no gradients).
//! Computing a direction from activations lives in `secvec-core` (`steering`).

use burn::module::{Module, Param, ParamId};
use burn::tensor::{Tensor, TensorData, backend::Backend};

/// One named steering vector of one layer.
#[derive(Module, Debug)]
pub struct SteeringVector<B: Backend> {
    /// The vector's name (several can be attached to a layer).
    pub name: String,
    /// `[hidden]`, frozen.
    pub vector: Param<Tensor<B, 1>>,
    /// The multiple of `vector` added.
    pub coefficient: f64,
    /// Whether it takes part in the forward pass.
    pub active: bool,
}

impl<B: Backend> SteeringVector<B> {
    /// A frozen vector from host values.
    pub fn new(name: &str, values: Vec<f32>, coefficient: f64, device: &B::Device) -> Self {
        let n = values.len();
        Self {
            name: name.to_string(),
            vector: Param::initialized(
                ParamId::new(),
                Tensor::from_data(TensorData::new(values, [n]), device),
            ),
            coefficient,
            active: true,
        }
    }

    /// `h` with the vector added at every position when active, unchanged otherwise.
    pub fn apply(&self, h: Tensor<B, 3>) -> Tensor<B, 3> {
        if !self.active {
            return h;
        }
        let d = self.vector.dims()[0];
        h + self
            .vector
            .val()
            .mul_scalar(self.coefficient)
            .reshape([1, 1, d])
    }
}
