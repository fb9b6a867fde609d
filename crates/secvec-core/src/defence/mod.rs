//! Defences against harmful fine-tuning other than security vectors, to be compared with them
//! under one threat model: the defender aligns the model and controls how it is fine-tuned; the
//! user supplies the fine-tuning data, of which some share is harmful (the protocol of Vaccine,
//! Lisa and Booster: n samples, a harmful fraction p; harmful rate and fine-tune accuracy).
//!
//! - [`safe_instr`]: refusal demonstrations mixed into the user's data (SafeInstr);
//! - [`vaccine`]: alignment under the worst small perturbation of the hidden states (Vaccine);
//! - [`lisa`]: fine-tuning that alternates with steps on the defender's alignment data, each
//!   state pulled towards where the other left the weights (Lisa).
//!
//! Security vectors themselves live in [`crate::train::phases`] (made in phase 1, active and
//! frozen during the fine-tuning of phase 2).

pub mod lisa;
pub mod safe_instr;
pub mod vaccine;

pub use lisa::{LisaConfig, finetune_lisa};
pub use safe_instr::{finetune_safe_instr, mix_in_safety_data, mix_in_safety_data_marked};
pub use vaccine::{VaccineConfig, train_alignment_vaccine};

/// A defence that changes how the trainer trains, not only its data.
pub(crate) enum Defence<'a> {
    None,
    /// Fine-tuning alternating with alignment data (Lisa).
    Lisa(lisa::BiState<'a>),
    /// Perturbation-aware training (Vaccine).
    Vaccine(&'a VaccineConfig),
    /// SafeInstr beside active security vectors, its demonstrations trained with the vectors
    /// off: `true` at the index of each demonstration among the training examples.
    SafeInstrVectorsOff(&'a [bool]),
}

impl Defence<'_> {
    pub(crate) fn lisa(&self) -> Option<&lisa::BiState<'_>> {
        match self {
            Defence::Lisa(b) => Some(b),
            _ => None,
        }
    }

    pub(crate) fn vaccine(&self) -> Option<&VaccineConfig> {
        match self {
            Defence::Vaccine(v) => Some(v),
            _ => None,
        }
    }

    /// SafeInstr with its demonstrations trained with the vectors off: which examples they are.
    pub(crate) fn demonstrations(&self) -> Option<&[bool]> {
        match self {
            Defence::SafeInstrVectorsOff(m) => Some(m),
            _ => None,
        }
    }

    /// What the defence adds to a training run's identity (its checkpoint fingerprint): its
    /// settings; empty without one, which keeps the fingerprints of plain runs.
    pub(crate) fn salt(&self) -> String {
        match self {
            Defence::None => String::new(),
            Defence::Lisa(b) => {
                format!("lisa {}", serde_json::to_string(b.cfg).unwrap_or_default())
            }
            Defence::Vaccine(v) => {
                format!("vaccine {}", serde_json::to_string(v).unwrap_or_default())
            }
            Defence::SafeInstrVectorsOff(m) => {
                let at: Vec<String> = m
                    .iter()
                    .enumerate()
                    .filter(|(_, d)| **d)
                    .map(|(i, _)| i.to_string())
                    .collect();
                format!("safe_instr vectors off at {}", at.join(","))
            }
        }
    }
}
