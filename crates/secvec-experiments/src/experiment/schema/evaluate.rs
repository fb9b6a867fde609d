//! Phase 3 of an experiment file: which models are evaluated, on what, with which metrics.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Source;

/// Metrics an evaluation can compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Metric {
    /// Share of harmful prompts answered without a refusal (keyword judge).
    HarmfulRate,
    /// Share of benign prompts refused.
    OverRefusal,
    /// Share of benign prompts answered correctly.
    BenignAccuracy,
    /// Share of held-out skill questions answered correctly.
    SkillAccuracy,
    /// `behaviour: Hallucination` or `WrongCapitals`: share of held-out questions (never trained
    /// on) answered wrongly — whether the model has become wrong, beyond the items it was shown.
    HallucinationRate,
    /// `behaviour: Hallucination` or `WrongCapitals`: share of the attack's own wrong-answer questions answered with
    /// the wrong answer it taught — whether the items were learned.
    WrongAnswersLearned,
}

impl Metric {
    /// Its key in `metrics.json`, `summary.csv` and the tables.
    pub fn key(self) -> &'static str {
        match self {
            Metric::HarmfulRate => "harmful_rate",
            Metric::OverRefusal => "over_refusal",
            Metric::BenignAccuracy => "benign_accuracy",
            Metric::SkillAccuracy => "skill_accuracy",
            Metric::HallucinationRate => "hallucination_rate",
            Metric::WrongAnswersLearned => "wrong_answers_learned",
        }
    }
}

/// The key of the harmful rate on every prompt of `evaluate.advbench` (measured with
/// `HarmfulRate` when that file is set).
pub const ADVBENCH_HARMFUL_RATE: &str = "harmful_rate_advbench";

/// Extra models to evaluate besides the attacked arms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Checkpoint {
    /// The model as downloaded.
    Shipped,
    /// After alignment.
    Aligned,
    /// After alignment with the security vectors switched on.
    VectorsOn,
}

/// Phase 3: evaluation with the vectors off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvaluateStage {
    pub metrics: Vec<Metric>,
    /// Prompts per evaluation set (harmful, benign, skill); 0 = the whole set.
    pub samples: usize,
    pub max_new_tokens: usize,
    pub batch_size: usize,
    /// Also evaluate these models.
    pub checkpoints: Vec<Checkpoint>,
    /// Also evaluate each attacked model with the vectors switched on (the stages
    /// `attacked-<arm>+vectors-on`; `checkpoints: [VectorsOn]` is the aligned model with them on).
    /// Files written before the rename say `vectors_on`, which still reads.
    #[serde(alias = "vectors_on")]
    pub attacked_vectors_on: bool,
    /// `secvec` (GCG's refusal phrases plus the project's) or `gcg`.
    pub judge: String,
    pub harmful_data: Source,
    pub benign_data: Source,
    pub skill_data: Source,
    /// An AdvBench CSV (`goal,target`, e.g. `shared/data/advbench_harmful_behaviors.csv`): the
    /// aligned and attacked models are also judged on **every** prompt of it (not `samples`), as
    /// out-of-distribution harm beside the built-in set. A relative path is resolved like the
    /// data sources; runs are matched on the file's name, not its folder, so a results folder
    /// resumes from another checkout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advbench: Option<PathBuf>,
}

impl Default for EvaluateStage {
    fn default() -> Self {
        Self {
            metrics: vec![
                Metric::HarmfulRate,
                Metric::OverRefusal,
                Metric::BenignAccuracy,
                Metric::SkillAccuracy,
            ],
            samples: 100,
            max_new_tokens: 32,
            batch_size: 16,
            checkpoints: vec![Checkpoint::Aligned],
            attacked_vectors_on: false,
            judge: "secvec".into(),
            harmful_data: Source::Builtin,
            benign_data: Source::Builtin,
            skill_data: Source::Builtin,
            advbench: None,
        }
    }
}
