//! # secvec-core
//!
//! Security vectors (Zhou et al., *Making Harmful Behaviors Unlearnable for Large Language
//! Models*, Findings of ACL 2024): named low-rank adapters on the projections of a
//! [`secvec_models::Llama`] that can be switched on and off and frozen independently, stored in
//! PEFT's adapter format.

pub mod adapter;
pub mod checkpoint;
pub mod data;
pub mod defence;
pub mod error;
pub mod eval;
pub mod fsio;
pub mod steering;
pub mod train;

pub use error::{CoreError, Result};
