//! Low-rank adapters on the projections of a [`Llama`](secvec_models::Llama), in the manner of
//! PEFT's `tuners/lora`: the configuration ([`config`]), the operations on the adapter layer of a
//! model — attach, switch on/off, freeze, merge, detach ([`layer`]) — and the on-disk format
//! shared with PEFT ([`peft`]).
//!
//! The security vectors of the paper are the adapter named [`SECURITY`]; the user's optional
//! fine-tuning LoRA is [`TASK`].

pub mod config;
pub mod layer;
pub mod peft;

pub use config::{AdapterConfig, AdapterInit};
pub use layer::{
    adapter_names, add_adapter, detach_adapter, merge_adapter, set_adapter_active,
    set_adapter_trainable, set_base_trainable, unmerge_adapter,
};
pub use peft::{load_peft_adapter, save_peft_adapter};

/// Name of the alignment LoRA (stage 0, merged into the base once trained).
pub const ALIGN: &str = "align";
/// Name of the security-vector adapter.
pub const SECURITY: &str = "security";
/// Name of the task LoRA used for fine-tuning.
pub const TASK: &str = "task";
