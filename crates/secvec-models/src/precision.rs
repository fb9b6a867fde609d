//! Compute precision: f32, or mixed precision with f32 master weights.
//!
//! Parameters always stay f32 in memory (the "master weights" the optimizer updates). In
//! [`Precision::Bf16`] and [`Precision::F16`] the matrix products — the seven projections, their
//! LoRA adapters, `q·kᵀ`, `p·v` and the LM head — cast their operands to the half type and run
//! there (on GPUs, on the tensor cores); embeddings, RMSNorm, RoPE, softmax, the residual stream
//! and the loss stay f32, and every projection's output is cast back to f32. This is what
//! PyTorch's `torch.autocast` does for a Llama: products in half precision, reductions in f32.
//! Autodiff carries the casts backwards, so gradients arrive at the f32 parameters as f32.
//!
//! f16 has a narrow exponent range: training in f16 needs loss scaling, which the trainer does
//! (see `secvec_core::train`); bf16 has f32's range and needs none.

use std::fmt;
use std::str::FromStr;

use burn::tensor::{DType, FloatDType, Tensor, backend::Backend};

use crate::kernels;
use serde::{Deserialize, Serialize};

/// The precision matrix products run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// Matrix products in bfloat16, f32 master weights and reductions.
    Bf16,
    /// Matrix products in IEEE half, f32 master weights and reductions (training uses dynamic
    /// loss scaling).
    F16,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::Bf16, Precision::F16];

    /// The dtype matrix products are cast to; `None` for f32 (no casts at all).
    pub fn compute_dtype(self) -> Option<FloatDType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(FloatDType::BF16),
            Precision::F16 => Some(FloatDType::F16),
        }
    }

    /// Whether training needs loss scaling to keep small gradients from flushing to zero.
    pub fn needs_loss_scaling(self) -> bool {
        self == Precision::F16
    }

    /// Casts `x` to the compute dtype (a no-op in f32, or when `x` already has it).
    pub fn to_compute<B: Backend, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self.compute_dtype() {
            Some(dt) if x.dtype() != dt.into() => x.cast(dt),
            _ => x,
        }
    }

    /// Casts a product back to f32 (a no-op in f32, or when `x` is f32 already).
    pub fn to_f32<B: Backend, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self.compute_dtype() {
            Some(_) if x.dtype() != DType::F32 => x.cast(FloatDType::F32),
            _ => x,
        }
    }

    /// `a · b` in the compute precision, returned in f32 (in f32: [`kernels::matmul`]).
    pub fn matmul<B: Backend>(self, a: Tensor<B, 2>, b: Tensor<B, 2>) -> Tensor<B, 2> {
        match self.compute_dtype() {
            None => kernels::matmul(a, b),
            Some(_) => self.to_f32(self.to_compute(a).matmul(self.to_compute(b))),
        }
    }
}

/// Checks that `B` on `device` can compute in `precision`: a small product in that dtype must run
/// and agree with f32. Backends without half-precision kernels panic deep inside (wgpu's WGSL
/// has no bf16, for example); this turns that into an error before a long job starts.
pub fn probe<B: Backend>(precision: Precision, device: &B::Device) -> Result<(), String> {
    if precision == Precision::F32 {
        return Ok(());
    }
    let run = || -> Vec<f32> {
        let n = 32;
        let a: Vec<f32> = (0..n * n).map(|i| ((i % 7) as f32 - 3.0) / 4.0).collect();
        let b: Vec<f32> = (0..n * n).map(|i| ((i % 5) as f32 - 2.0) / 2.0).collect();
        let a = Tensor::<B, 2>::from_data(burn::tensor::TensorData::new(a, [n, n]), device);
        let b = Tensor::<B, 2>::from_data(burn::tensor::TensorData::new(b, [n, n]), device);
        let half = precision.matmul(a.clone(), b.clone());
        let full = a.matmul(b);
        (half - full)
            .abs()
            .max()
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .unwrap_or_else(|_| vec![f32::NAN])
    };
    // Silence the backend's panic message: the error below says what failed.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run));
    std::panic::set_hook(hook);
    match result {
        // Inputs are exact in every format and products of ≤ 32 terms stay within bf16's
        // integer range at this scale, so any deviation is a wrong kernel, not rounding.
        Ok(v) if v.first().is_some_and(|d| *d <= 1e-3) => Ok(()),
        Ok(v) => Err(format!(
            "a {precision} matrix product disagrees with f32 (max deviation {:?})",
            v.first()
        )),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(format!("this backend cannot compute in {precision}: {msg}"))
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        })
    }
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Precision::ALL
            .into_iter()
            .find(|p| p.to_string() == s.to_ascii_lowercase())
            .ok_or_else(|| format!("unknown precision `{s}` (expected f32, bf16 or f16)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::DType;

    type B = burn::backend::Flex;

    #[test]
    fn probe_accepts_flex_and_reports_ndarray_clearly() {
        for p in Precision::ALL {
            probe::<B>(p, &Default::default()).unwrap();
            let nd = probe::<burn::backend::NdArray<f32>>(p, &Default::default());
            match p {
                Precision::F32 => nd.unwrap(),
                _ => assert!(nd.unwrap_err().contains(&format!("cannot compute in {p}"))),
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for p in Precision::ALL {
            assert_eq!(p.to_string().parse::<Precision>().unwrap(), p);
        }
        let err = "fp8".parse::<Precision>().unwrap_err();
        assert!(err.contains("fp8") && err.contains("bf16"), "{err}");
    }

    #[test]
    fn products_run_in_half_and_come_back_f32() {
        let dev = Default::default();
        let a = Tensor::<B, 2>::from_floats([[1.0, 2.0], [3.0, 4.0]], &dev);
        let b = Tensor::<B, 2>::from_floats([[0.5, 0.0], [0.25, 1.0]], &dev);
        for p in Precision::ALL {
            let half = p.to_compute(a.clone());
            let want = match p {
                Precision::F32 => DType::F32,
                Precision::Bf16 => DType::BF16,
                Precision::F16 => DType::F16,
            };
            assert_eq!(half.dtype(), want);
            let y = p.matmul(a.clone(), b.clone());
            assert_eq!(y.dtype(), DType::F32);
            // Exactly representable in every format.
            assert_eq!(
                y.into_data().to_vec::<f32>().unwrap(),
                vec![1.0, 2.0, 2.5, 4.0]
            );
        }
    }
}
