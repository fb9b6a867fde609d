//! The one place where a backend name from the command line or a RON file becomes a
//! monomorphised Burn backend.

use std::fmt;

use anyhow::{Result, bail};
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

/// Backends selectable at run time (each needs its cargo feature compiled in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// CPU (burn-ndarray); what the test suite runs on.
    Ndarray,
    /// CPU (burn-flex: strided gemm without operand copies), the default: 7× faster decoding than
    /// ndarray on SmolLM2 (results/benchmarks/).
    #[default]
    Flex,
    /// wgpu with its default graphics API for the platform.
    Wgpu,
    /// wgpu on Vulkan.
    Vulkan,
    /// CUDA.
    Cuda,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Ndarray => "ndarray",
            BackendKind::Flex => "flex",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Vulkan => "vulkan",
            BackendKind::Cuda => "cuda",
        })
    }
}

/// A job that runs on any autodiff backend (inference uses the inner backend).
pub trait Job {
    type Output;
    fn run<B: AutodiffBackend>(
        self,
        device: B::Device,
        backend: BackendKind,
    ) -> Result<Self::Output>;
}

/// Runs `job` on the backend `kind`.
#[allow(unreachable_code)]
pub fn dispatch<J: Job>(kind: BackendKind, job: J) -> Result<J::Output> {
    match kind {
        BackendKind::Ndarray => {
            #[cfg(feature = "ndarray")]
            return job.run::<burn::backend::Autodiff<burn::backend::NdArray<f32>>>(
                Default::default(),
                kind,
            );
        }
        BackendKind::Flex => {
            #[cfg(feature = "flex")]
            return job
                .run::<burn::backend::Autodiff<burn::backend::Flex>>(Default::default(), kind);
        }
        BackendKind::Wgpu => {
            #[cfg(feature = "wgpu")]
            return job
                .run::<burn::backend::Autodiff<burn::backend::Wgpu>>(Default::default(), kind);
        }
        BackendKind::Vulkan => {
            #[cfg(feature = "vulkan")]
            return job
                .run::<burn::backend::Autodiff<burn::backend::Vulkan>>(Default::default(), kind);
        }
        BackendKind::Cuda => {
            #[cfg(feature = "cuda")]
            return job
                .run::<burn::backend::Autodiff<burn::backend::Cuda>>(Default::default(), kind);
        }
    }
    bail!(
        "backend `{kind}` is not compiled into this binary; rebuild with `--features {kind}` \
         (e.g. `cargo run -p secvec-experiments --release --features {kind} -- ...`)"
    )
}
