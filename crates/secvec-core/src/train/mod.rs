//! Supervised fine-tuning of a [`Llama`](secvec_models::Llama) with step-level control of
//! adapters, and the three phases of the security-vector method built on it.
//!
//! burn-train's `Learner` owns the model for a whole fit and drives epochs itself; the phases
//! here need to freeze, activate and swap adapters between (and inside) runs, accumulate
//! gradients with a token-weighted loss, clip by the *global* norm (burn's `GradientClipping`
//! clips per tensor) and stop on non-finite losses, so the loop is written here. burn-optim's
//! AdamW and gradient accumulator are used as they are.

pub mod batch;
pub mod config;
pub mod loss;
pub mod optim;
pub mod phases;
pub mod resume;
pub mod trainer;

pub use batch::{TextPair, TrainExample, encode_pairs};
pub use config::{LossScaleConfig, Schedule, TrainConfig};
pub use optim::global_grad_norm;
pub use phases::{
    AlignConfig, FinetuneConfig, FinetuneMode, SecurityVectorConfig, SecurityVectors, finetune,
    set_security_vectors, train_alignment, train_security_vectors,
};
pub use resume::Checkpointing;
pub use trainer::{NoCallback, StepLog, TrainCallback, TrainReport, train, trainable_params};
