//! Shared helpers of the integration tests (included with `mod common;`).
#![allow(dead_code)]

pub use secvec_models::testing::*;

pub type B = burn::backend::NdArray<f32>;
