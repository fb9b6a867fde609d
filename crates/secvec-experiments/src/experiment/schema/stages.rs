//! The stages of an experiment file: alignment, security vectors, fine-tuning (the attack).

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use secvec_core::adapter::AdapterConfig;
use secvec_core::defence::{LisaConfig, VaccineConfig};
use secvec_core::train::phases::all_targets;
use secvec_core::train::{AlignConfig, FinetuneConfig, FinetuneMode, SecurityVectorConfig};

use super::Source;

fn is_true(b: &bool) -> bool {
    *b
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Stage 0: teach the shipped model to refuse (task-LoRA SFT on refusals + benign answers,
/// merged into the base). Cached by content hash and reused by every run that shares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlignStage {
    /// Harmful requests with refusals.
    pub refusals: usize,
    /// Benign requests with answers.
    pub benign: usize,
    pub refusal_data: Source,
    pub benign_data: Source,
    pub rank: usize,
    pub alpha: f64,
    pub targets: Vec<String>,
    pub lr: f64,
    pub epochs: usize,
    pub batch_size: usize,
    /// Vaccine, a baseline defence (`secvec_core::defence::vaccine`; Huang et al., NeurIPS
    /// 2024): the alignment is trained under the worst perturbation of norm `rho` of every
    /// layer's attention output, so that later fine-tuning drifts its hidden states less.
    /// `None`: plain alignment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vaccine: Option<VaccineConfig>,
}

impl Default for AlignStage {
    fn default() -> Self {
        // secvec-core's defaults are the only defaults.
        let core = AlignConfig::default();
        Self {
            refusals: 150,
            benign: 150,
            refusal_data: Source::Builtin,
            benign_data: Source::Builtin,
            rank: core.adapter.rank,
            alpha: core.adapter.alpha,
            targets: core.adapter.targets,
            lr: core.train.lr,
            epochs: core.train.epochs,
            batch_size: core.train.batch_size,
            vaccine: None,
        }
    }
}

/// Phase 1: security vectors from harmful (prompt → compliant answer) samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityVectorStage {
    /// Harmful samples the vectors are made from; 0 means no vectors (the `active` arm is then
    /// the same model as the `off` arm and is not trained twice).
    pub samples: usize,
    pub data: Source,
    /// Benign (prompt → answer) samples mixed into the vectors' training data (0: none, the
    /// paper's recipe). They teach the vectors to leave benign requests alone, so that a task
    /// learned with the vectors on does not lean on them and still works once they are off.
    /// From the end of the built-in `align` split (the alignment stage takes from its start).
    #[serde(skip_serializing_if = "is_zero")]
    pub benign: usize,
    #[serde(skip_serializing_if = "Source::is_builtin")]
    pub benign_data: Source,
    /// What the vectors are: LoRA adapters trained on the samples (default), or
    /// activation-steering directions computed from them (`Steering(layers: [..], coefficient:
    /// ..)`).
    #[serde(skip_serializing_if = "VectorKind::is_lora")]
    pub kind: VectorKind,
    pub rank: usize,
    pub alpha: f64,
    pub targets: Vec<String>,
    pub lr: f64,
    pub epochs: usize,
    /// Examples per step when training LoRA vectors; examples per forward pass when computing
    /// steering directions.
    pub batch_size: usize,
}

/// The kind of security vectors.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub enum VectorKind {
    /// LoRA adapters trained on the harmful samples with the model frozen (the paper's security
    /// vectors; `rank`, `alpha`, `targets`, `lr`, `epochs` apply).
    #[default]
    Lora,
    /// Activation-steering directions (persona vectors' preventative steering, arXiv
    /// 2507.21509; `secvec_core::steering`): at each of `layers`, the mean residual-stream
    /// activation of the samples' compliant answers minus that of refusals of the same prompts,
    /// added `coefficient` times after the layer. Computed, not trained: the LoRA fields do not
    /// apply. The refusals come from the built-in corpus, so `data` must be built-in.
    Steering {
        layers: Vec<usize>,
        #[serde(default = "one")]
        coefficient: f64,
    },
}

fn one() -> f64 {
    1.0
}

impl VectorKind {
    fn is_lora(&self) -> bool {
        *self == VectorKind::Lora
    }
}

impl Default for SecurityVectorStage {
    fn default() -> Self {
        let core = SecurityVectorConfig::default();
        Self {
            samples: 100,
            data: Source::Builtin,
            benign: 0,
            benign_data: Source::Builtin,
            kind: VectorKind::Lora,
            rank: core.adapter.rank,
            alpha: core.adapter.alpha,
            targets: core.adapter.targets,
            lr: core.train.lr,
            epochs: core.train.epochs,
            batch_size: core.train.batch_size,
        }
    }
}

/// What the attack trains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Mode {
    /// Every base weight (the paper's setting; default lr 2e-5).
    Full,
    /// A separate task LoRA (default lr 2e-4).
    Lora {
        #[serde(default = "default_task_rank")]
        rank: usize,
        #[serde(default = "default_task_alpha")]
        alpha: f64,
        #[serde(default = "all_targets")]
        targets: Vec<String>,
    },
}

/// The task LoRA of secvec-core's default fine-tuning.
fn default_task_adapter() -> AdapterConfig {
    match FinetuneConfig::default().mode {
        FinetuneMode::Lora(a) => a,
        FinetuneMode::Full => AdapterConfig::default(),
    }
}
fn default_task_rank() -> usize {
    default_task_adapter().rank
}
fn default_task_alpha() -> f64 {
    default_task_adapter().alpha
}

/// The built-in skill of the attack's useful data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SkillTask {
    /// Invented facts of a fictional knowledge base, asked in held-out phrasings
    /// (`secvec_core::data::corpus`). Not written into stored configurations, so runs made
    /// before this field existed keep their configuration hash.
    #[default]
    Facts,
    /// Sentences about a person turned into a fixed-format directory entry, evaluated on held-out
    /// sentence templates and names (`secvec_core::data::records`).
    Records,
    /// `behaviour: WrongCapitals` only: true capitals of countries of no other set, trained in
    /// two phrasings and evaluated in the third (`secvec_core::data::capitals`).
    Capitals,
}

impl SkillTask {
    fn is_facts(&self) -> bool {
        *self == SkillTask::Facts
    }
}

/// Whether the security vectors are active during the attack (one arm each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash, PartialOrd, Ord)]
pub enum Arm {
    /// No vectors: the plain attack.
    Off,
    /// Vectors active and frozen during the attack, off at evaluation.
    Active,
}

impl Arm {
    pub fn as_str(self) -> &'static str {
        match self {
            Arm::Off => "off",
            Arm::Active => "active",
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Arm::Off => "without vectors",
            Arm::Active => "with vectors",
        }
    }
}

/// Phase 2: the user's fine-tuning data — harmful samples mixed with a new skill — trained with
/// and without the vectors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneStage {
    /// Harmful (prompt → compliant answer) samples.
    pub harmful: usize,
    pub harmful_data: Source,
    /// Skill (useful-task) samples: for `Facts`, cycled over the chosen facts' training
    /// phrasings; for `Records`, that many distinct sentences.
    pub skill: usize,
    /// Which built-in skill the skill samples teach.
    #[serde(skip_serializing_if = "SkillTask::is_facts")]
    pub skill_task: SkillTask,
    /// Facts of the built-in knowledge base the skill samples teach (0 = all 300); the skill is
    /// evaluated on held-out phrasings of these facts. Unused by `skill_task: Records`.
    pub skill_facts: usize,
    /// A user file of useful data instead of the built-in skill (then `skill_facts` is unused
    /// and the skill is evaluated on `evaluate.skill_data`).
    pub skill_data: Source,
    /// With `ratio`, the total number of samples `n`: `round(n·p)` harmful, the rest skill
    /// (overrides `harmful` and `skill`).
    pub total: Option<usize>,
    /// The harmful fraction `p` of `total`.
    pub ratio: Option<f64>,
    /// SafeInstr, a baseline defence (`secvec_core::defence::safe_instr`; Bianchi et al., ICLR
    /// 2024): this many refusal demonstrations (harmful request → refusal) shuffled into the
    /// user's data by the defender (0: none). From the end of the built-in `align` split (the
    /// alignment stage takes from its start) or `safety_data`. With `arms: [Off]` it is the
    /// defence alone; with `Active`, combined with the vectors.
    #[serde(skip_serializing_if = "is_zero")]
    pub safety: usize,
    #[serde(skip_serializing_if = "Source::is_builtin")]
    pub safety_data: Source,
    /// SafeInstr with security vectors (the `Active` arm): whether its demonstrations are trained
    /// with the vectors on, like the user's data (`true`, the default), or off (`false`: each
    /// step's demonstrations in micro-batches of their own, so that the refusals are learned by
    /// the model as it is used at inference). Needs `safety > 0`; the `Off` arm is the same
    /// either way. Written only when `false`, so that earlier runs keep their hashes.
    #[serde(skip_serializing_if = "is_true")]
    pub safety_with_vectors: bool,
    /// Lisa, a baseline defence (`secvec_core::defence::lisa`; Huang et al., NeurIPS 2024):
    /// fine-tuning alternates `align_steps` steps on the alignment stage's data with
    /// `finetune_steps` on the user's, each state pulled back by `rho/2 · ‖w − w̃‖²` towards
    /// where the other left the weights. `None`: plain fine-tuning. Needs `align`. With
    /// `arms: [Off]` it is the defence alone; with `Active`, combined with the vectors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lisa: Option<LisaConfig>,
    pub mode: Mode,
    /// Learning rate (`None`: 2e-4 for a task LoRA, 2e-5 for full fine-tuning).
    pub lr: Option<f64>,
    pub epochs: usize,
    pub batch_size: usize,
    /// The arms to run.
    pub arms: Vec<Arm>,
}

impl Default for FinetuneStage {
    fn default() -> Self {
        let core = FinetuneConfig::default();
        Self {
            harmful: 1000,
            harmful_data: Source::Builtin,
            skill: 300,
            skill_task: SkillTask::Facts,
            skill_facts: 100,
            skill_data: Source::Builtin,
            total: None,
            ratio: None,
            safety: 0,
            safety_data: Source::Builtin,
            safety_with_vectors: true,
            lisa: None,
            mode: Mode::Lora {
                rank: default_task_rank(),
                alpha: default_task_alpha(),
                targets: default_task_adapter().targets,
            },
            lr: None,
            epochs: core.train.epochs,
            batch_size: core.train.batch_size,
            arms: vec![Arm::Off, Arm::Active],
        }
    }
}

impl FinetuneStage {
    /// `lr`, or secvec-core's default for the mode.
    pub fn learning_rate(&self) -> f64 {
        self.lr.unwrap_or(match self.mode {
            Mode::Full => FinetuneMode::Full.default_lr(),
            Mode::Lora { .. } => FinetuneMode::Lora(default_task_adapter()).default_lr(),
        })
    }

    /// `(harmful, skill)` sample counts after applying `total`/`ratio`.
    pub fn counts(&self) -> Result<(usize, usize)> {
        match (self.total, self.ratio) {
            (None, None) => Ok((self.harmful, self.skill)),
            (Some(n), Some(p)) => {
                if !(0.0..=1.0).contains(&p) {
                    bail!("finetune.ratio must be in [0, 1], got {p}");
                }
                let h = (n as f64 * p).round() as usize;
                Ok((h, n - h))
            }
            _ => bail!("finetune.total and finetune.ratio must be given together"),
        }
    }
}
