//! The CPU kernels behind [`crate::kernels`], on plain `f32` slices: no Burn types here, so each
//! is tested on its own against a direct computation.

pub mod adamw;
pub mod attention;
pub mod gemm;
pub mod math;
pub mod norm;
pub mod par;
pub mod rope;
pub mod swiglu;
pub mod xent;
