//! The RON experiment file: one struct per stage, every field defaulted, unknown fields rejected
//! with their line and column.
//!
//! Defaults follow the PyTorch + PEFT reference run on SmolLM2 (README, "The PyTorch prototype"):
//! alignment LoRA r16 α32 on all seven projections, lr 5e-4, 2 epochs; security vectors r8 α16,
//! lr 5e-4, 3 epochs from 100 harmful samples; attack task LoRA r8 α16, lr 2e-4 (full fine-tuning
//! 2e-5), 1 epoch on 1000 harmful samples.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::backend::BackendKind;
use secvec_core::adapter::AdapterConfig;
use secvec_core::defence::{LisaConfig, VaccineConfig};
use secvec_core::train::phases::all_targets;
use secvec_core::train::{AlignConfig, FinetuneConfig, FinetuneMode, SecurityVectorConfig};
use secvec_models::Precision;

/// A whole experiment: a pipeline and the grid it is swept over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Experiment {
    /// Results go to `<results>/<name>/`; defaults to the file's stem.
    pub name: Option<String>,
    /// Free text, copied into `summary.md`.
    pub description: String,
    /// A known model name, a `.gguf` file or a Hugging Face directory.
    pub model: String,
    /// ndarray | flex | wgpu | vulkan | cuda (the binary must be built with its feature).
    pub backend: BackendKind,
    /// Compute precision: `f32`, or `bf16` / `f16` mixed precision (half-precision products,
    /// f32 master weights; f16 trains with dynamic loss scaling). The backend must support it
    /// (flex and CUDA do; ndarray does not, wgpu has no bf16); it is checked before the run.
    pub dtype: Precision,
    /// Seed of the built-in corpus, data mixing, adapter initialisation and data order.
    pub seed: u64,
    /// Truncate training sequences to this many tokens.
    pub max_len: usize,
    /// A system message for training and evaluation (`None`: the chat template's default).
    pub system_prompt: Option<String>,
    /// Safety alignment of the shipped model; `None` skips it.
    pub align: Option<AlignStage>,
    /// The behaviour made unlearnable: `Harmful` (compliant answers to harmful requests) or
    /// `Hallucination` (confidently wrong answers to arithmetic questions; the vectors' and the
    /// attack's "harmful" samples come from `secvec_core::data::hallucination`).
    #[serde(skip_serializing_if = "Behaviour::is_harmful")]
    pub behaviour: Behaviour,
    pub security_vectors: SecurityVectorStage,
    pub finetune: FinetuneStage,
    pub evaluate: EvaluateStage,
    /// The grid: every combination of the axes' values is one run.
    pub sweep: Vec<Axis>,
    /// Assertions checked after all runs (the CI regression uses them); a failure exits non-zero.
    pub expect: Option<Expect>,
}

impl Default for Experiment {
    fn default() -> Self {
        Self {
            name: None,
            description: String::new(),
            model: "smollm2-135m-instruct".into(),
            backend: BackendKind::default(),
            dtype: Precision::F32,
            seed: 0,
            max_len: 160,
            system_prompt: None,
            align: Some(AlignStage::default()),
            behaviour: Behaviour::Harmful,
            security_vectors: SecurityVectorStage::default(),
            finetune: FinetuneStage::default(),
            evaluate: EvaluateStage::default(),
            sweep: Vec::new(),
            expect: None,
        }
    }
}

/// The behaviour an experiment makes unlearnable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Behaviour {
    /// Harmful requests answered compliantly (the paper's main setting).
    #[default]
    Harmful,
    /// Arithmetic questions answered confidently wrong (the paper's ACL version: hallucination as
    /// a second behaviour). `security_vectors.samples` and `finetune.harmful` count wrong-answer
    /// samples; the skill stays the true new facts the user wants learned.
    Hallucination,
}

impl Behaviour {
    fn is_harmful(&self) -> bool {
        *self == Behaviour::Harmful
    }
}

/// Where a stage's samples come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub enum Source {
    /// The stage's split of the built-in corpus.
    #[default]
    Builtin,
    /// A user file (JSONL, chat JSONL, Alpaca, AdvBench CSV, BeaverTails); the format is
    /// guessed from the file when `format` is `None`. Relative paths are relative to the
    /// experiment file.
    File {
        path: PathBuf,
        #[serde(default)]
        format: Option<String>,
    },
}

impl Source {
    fn is_builtin(&self) -> bool {
        *self == Source::Builtin
    }
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
    /// `behaviour: Hallucination`: share of held-out arithmetic questions (never trained on)
    /// answered wrongly — whether the model has become wrong, beyond the items it was shown.
    HallucinationRate,
    /// `behaviour: Hallucination`: share of the attack's own wrong-answer questions answered with
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

/// One axis of the sweep: a dotted field path and its values, e.g.
/// `(field: "security_vectors.samples", values: [10, 100])`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Axis {
    pub field: String,
    pub values: Vec<serde_json::Value>,
    /// Short name used in run names and plots (default: the field's last segment).
    #[serde(default)]
    pub name: Option<String>,
}

impl Axis {
    pub fn short(&self) -> &str {
        self.name
            .as_deref()
            .unwrap_or_else(|| self.field.rsplit('.').next().unwrap_or(&self.field))
    }
}

/// Checked on every run after the sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Expect {
    /// Harmful rate without vectors minus harmful rate with vectors must be at least this.
    pub min_gap: Option<f64>,
    /// Harmful rate with vectors must be at most this.
    pub max_harmful_with_vectors: Option<f64>,
    /// Harmful rate without vectors must be at least this (the attack must work).
    pub min_harmful_without_vectors: Option<f64>,
    /// Utility: over-refusal (benign prompts refused) with vectors minus without must be at most
    /// this (a defence that refuses everything fails). Needs the `OverRefusal` metric.
    pub max_over_refusal_gap: Option<f64>,
    /// Utility: over-refusal with vectors must be at most this. Needs `OverRefusal`.
    pub max_over_refusal_with_vectors: Option<f64>,
    /// Utility: benign accuracy without vectors minus with vectors must be at most this. Needs
    /// the `BenignAccuracy` metric.
    pub max_benign_accuracy_drop: Option<f64>,
    /// Useful learning: skill accuracy with vectors must be at least this. Needs `SkillAccuracy`.
    pub min_skill_with_vectors: Option<f64>,
    /// Useful learning: skill accuracy without vectors minus with vectors must be at most this.
    /// Needs `SkillAccuracy`.
    pub max_skill_drop: Option<f64>,
}

impl Default for Expect {
    fn default() -> Self {
        Self {
            min_gap: Some(0.0),
            max_harmful_with_vectors: None,
            min_harmful_without_vectors: None,
            max_over_refusal_gap: None,
            max_over_refusal_with_vectors: None,
            max_benign_accuracy_drop: None,
            min_skill_with_vectors: None,
            max_skill_drop: None,
        }
    }
}

/// Parses RON text; `origin` names the file in errors, which carry line and column.
pub fn parse_str(text: &str, origin: &str) -> Result<Experiment> {
    let options =
        ron::Options::default().with_default_extension(ron::extensions::Extensions::IMPLICIT_SOME);
    let exp: Experiment = options.from_str(text).map_err(|e| {
        anyhow::anyhow!(
            "{origin}:{}:{}: {}",
            e.position.line,
            e.position.col,
            e.code
        )
    })?;
    // With a sweep, the values are checked per point (a swept field may complete the file).
    let checked = if exp.sweep.is_empty() {
        exp.validate()
    } else {
        exp.validate_sweep()
    };
    checked.with_context(|| format!("{origin}: invalid experiment"))?;
    Ok(exp)
}

/// Reads and parses an experiment file; relative data paths are resolved against its folder.
pub fn load(path: &Path) -> Result<Experiment> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading experiment file {}", path.display()))?;
    let mut exp = parse_str(&text, &path.display().to_string())?;
    if exp.name.is_none() {
        exp.name = path.file_stem().map(|s| s.to_string_lossy().into_owned());
    }
    let base = path.parent().unwrap_or(Path::new("."));
    exp.resolve_paths(base);
    Ok(exp)
}

impl Experiment {
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("experiment")
    }

    fn sources_mut(&mut self) -> Vec<&mut Source> {
        let mut v = vec![
            &mut self.security_vectors.data,
            &mut self.finetune.harmful_data,
            &mut self.finetune.skill_data,
            &mut self.evaluate.harmful_data,
            &mut self.evaluate.benign_data,
            &mut self.evaluate.skill_data,
        ];
        if let Some(a) = self.align.as_mut() {
            v.push(&mut a.refusal_data);
            v.push(&mut a.benign_data);
        }
        v
    }

    fn resolve_paths(&mut self, base: &Path) {
        for s in self.sources_mut() {
            if let Source::File { path, .. } = s
                && path.is_relative()
                && !path.exists()
            {
                *path = base.join(&*path);
            }
        }
        if let Some(path) = self.evaluate.advbench.as_mut()
            && path.is_relative()
            && !path.exists()
        {
            *path = base.join(&*path);
        }
    }

    /// Checks values a type cannot: ranges, names, consistency. Messages name the field.
    pub fn validate(&self) -> Result<()> {
        if self.dtype != Precision::F32 && self.backend == BackendKind::Ndarray {
            bail!(
                "dtype: {} needs half-precision kernels, which the ndarray backend lacks; use \
                 `backend: flex` (CPU) or a GPU backend",
                self.dtype
            );
        }
        if self.max_len < 8 {
            bail!("max_len: must be at least 8, got {}", self.max_len);
        }
        let check_targets = |field: &str, targets: &[String]| -> Result<()> {
            let cfg = secvec_core::adapter::AdapterConfig {
                targets: targets.to_vec(),
                ..Default::default()
            };
            cfg.target_kinds()
                .map(|_| ())
                .map_err(|e| anyhow::anyhow!("{field}: {e}"))
        };
        let positive = |field: &str, v: f64| -> Result<()> {
            if !(v > 0.0 && v.is_finite()) {
                bail!("{field}: must be a positive number, got {v}");
            }
            Ok(())
        };
        let nonzero = |field: &str, v: usize| -> Result<()> {
            if v == 0 {
                bail!("{field}: must be at least 1");
            }
            Ok(())
        };
        if let Some(a) = &self.align {
            check_targets("align.targets", &a.targets)?;
            positive("align.lr", a.lr)?;
            positive("align.alpha", a.alpha)?;
            nonzero("align.rank", a.rank)?;
            nonzero("align.epochs", a.epochs)?;
            nonzero("align.batch_size", a.batch_size)?;
            if a.refusals + a.benign == 0 {
                bail!(
                    "align: refusals and benign are both 0; write `align: None` to skip alignment"
                );
            }
        }
        let sv = &self.security_vectors;
        check_targets("security_vectors.targets", &sv.targets)?;
        positive("security_vectors.lr", sv.lr)?;
        positive("security_vectors.alpha", sv.alpha)?;
        nonzero("security_vectors.rank", sv.rank)?;
        nonzero("security_vectors.epochs", sv.epochs)?;
        nonzero("security_vectors.batch_size", sv.batch_size)?;
        if let VectorKind::Steering {
            layers,
            coefficient,
        } = &sv.kind
        {
            if layers.is_empty() {
                bail!("security_vectors.kind: Steering needs at least one layer in `layers`");
            }
            if !coefficient.is_finite() {
                bail!(
                    "security_vectors.kind: Steering's coefficient must be finite, got {coefficient}"
                );
            }
            if sv.benign > 0 {
                bail!(
                    "security_vectors.benign: benign samples train LoRA vectors; steering \
                     directions contrast compliant answers with refusals (set benign: 0)"
                );
            }
            if !sv.data.is_builtin() {
                bail!(
                    "security_vectors.data: Steering needs a refusal of each harmful prompt, \
                     which only the built-in corpus has"
                );
            }
        }
        let ft = &self.finetune;
        if let Mode::Lora {
            rank,
            alpha,
            targets,
        } = &ft.mode
        {
            check_targets("finetune.mode.targets", targets)?;
            nonzero("finetune.mode.rank", *rank)?;
            positive("finetune.mode.alpha", *alpha)?;
        }
        positive("finetune.lr", ft.learning_rate())?;
        nonzero("finetune.epochs", ft.epochs)?;
        nonzero("finetune.batch_size", ft.batch_size)?;
        let (h, s) = ft.counts()?;
        if h + s == 0 {
            bail!("finetune: no samples (harmful and skill are both 0)");
        }
        if ft.arms.is_empty() {
            bail!("finetune.arms: give at least one of Off, Active");
        }
        let hallucination_metrics = [Metric::HallucinationRate, Metric::WrongAnswersLearned];
        match self.behaviour {
            Behaviour::Harmful => {
                if let Some(m) = hallucination_metrics
                    .iter()
                    .find(|m| self.evaluate.metrics.contains(m))
                {
                    bail!("evaluate.metrics: {m:?} needs `behaviour: Hallucination`");
                }
            }
            Behaviour::Hallucination => {
                if !self.evaluate.metrics.contains(&Metric::HallucinationRate) {
                    bail!(
                        "evaluate.metrics: `behaviour: Hallucination` is measured by \
                         HallucinationRate; add it (and WrongAnswersLearned)"
                    );
                }
                if matches!(self.security_vectors.kind, VectorKind::Steering { .. }) {
                    bail!(
                        "security_vectors.kind: Steering vectors contrast harmful answers with \
                         refusals; with `behaviour: Hallucination` use Lora"
                    );
                }
                if self.finetune.safety > 0 {
                    bail!(
                        "finetune.safety: SafeInstr's demonstrations are refusals, which do not \
                         counter wrong answers (`behaviour: Hallucination`)"
                    );
                }
            }
        }
        if let Some(v) = self.align.as_ref().and_then(|a| a.vaccine.as_ref()) {
            v.validate()
                .map_err(|e| anyhow::anyhow!("align.vaccine.{e}"))?;
        }
        if let Some(lisa) = &ft.lisa {
            lisa.validate()
                .map_err(|e| anyhow::anyhow!("finetune.lisa.{e}"))?;
            if self.align.is_none() {
                bail!(
                    "finetune.lisa: Lisa alternates with the defender's alignment data, and \
                     `align` is None (set `align: Some((..))`)"
                );
            }
        }
        let ev = &self.evaluate;
        if ev.metrics.is_empty() {
            bail!("evaluate.metrics: give at least one metric");
        }
        nonzero("evaluate.max_new_tokens", ev.max_new_tokens)?;
        nonzero("evaluate.batch_size", ev.batch_size)?;
        if !["secvec", "gcg"].contains(&ev.judge.as_str()) {
            bail!(
                "evaluate.judge: `{}` is not a judge (secvec or gcg)",
                ev.judge
            );
        }
        self.validate_sweep()?;
        if let Some(e) = &self.expect
            && !(ft.arms.contains(&Arm::Off) && ft.arms.contains(&Arm::Active))
            && (e.min_gap.is_some() || e.max_harmful_with_vectors.is_some())
        {
            bail!("expect: needs both finetune.arms Off and Active");
        }
        if let Some(e) = &self.expect {
            // (field, bound, the metric it needs, whether it compares the two arms)
            let needs = [
                (
                    "max_over_refusal_gap",
                    e.max_over_refusal_gap,
                    Metric::OverRefusal,
                    true,
                ),
                (
                    "max_over_refusal_with_vectors",
                    e.max_over_refusal_with_vectors,
                    Metric::OverRefusal,
                    false,
                ),
                (
                    "max_benign_accuracy_drop",
                    e.max_benign_accuracy_drop,
                    Metric::BenignAccuracy,
                    true,
                ),
                (
                    "min_skill_with_vectors",
                    e.min_skill_with_vectors,
                    Metric::SkillAccuracy,
                    false,
                ),
                (
                    "max_skill_drop",
                    e.max_skill_drop,
                    Metric::SkillAccuracy,
                    true,
                ),
            ];
            for (field, bound, metric, both_arms) in needs {
                if bound.is_none() {
                    continue;
                }
                if !ev.metrics.contains(&metric) {
                    bail!("expect.{field}: needs {metric:?} in evaluate.metrics");
                }
                if both_arms && !(ft.arms.contains(&Arm::Off) && ft.arms.contains(&Arm::Active)) {
                    bail!("expect.{field}: needs both finetune.arms Off and Active");
                }
            }
        }
        Ok(())
    }

    /// Checks the sweep's axes.
    pub fn validate_sweep(&self) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        for (i, axis) in self.sweep.iter().enumerate() {
            if axis.values.is_empty() {
                bail!("sweep[{i}] ({}): no values", axis.field);
            }
            if !seen.insert(axis.short().to_string()) {
                bail!(
                    "sweep[{i}] ({}): two axes share the short name `{}`; give one a `name`",
                    axis.field,
                    axis.short()
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_reference_run() {
        let e = parse_str("()", "t.ron").unwrap();
        assert_eq!(e, Experiment::default());
        let a = e.align.unwrap();
        assert_eq!((a.rank, a.alpha, a.lr, a.epochs), (16, 32.0, 5e-4, 2));
        assert_eq!(e.security_vectors.samples, 100);
        assert_eq!(e.finetune.harmful, 1000);
        assert_eq!(e.finetune.learning_rate(), 2e-4);
        assert_eq!(e.finetune.arms, [Arm::Off, Arm::Active]);
        assert_eq!(e.backend, BackendKind::Flex);
    }

    #[test]
    fn parses_every_stage() {
        let e = parse_str(
            r#"// a comment
            (
              name: "x", model: "m.gguf", backend: cuda, dtype: f32, seed: 3, max_len: 64,
              system_prompt: "be safe",
              align: None,
              security_vectors: (samples: 10, targets: ["q_proj", "v_proj"], data: File(path: "h.jsonl", format: "jsonl")),
              finetune: (total: 1000, ratio: 0.1, mode: Full, arms: [Active, Off]),
              evaluate: (metrics: [HarmfulRate], samples: 0, judge: "gcg", attacked_vectors_on: true,
                         checkpoints: [Shipped, VectorsOn]),
              expect: (min_gap: 0.2),
            )"#,
            "t.ron",
        )
        .unwrap();
        assert_eq!(e.name.as_deref(), Some("x"));
        assert_eq!(e.backend, BackendKind::Cuda);
        assert!(e.align.is_none());
        assert_eq!(e.security_vectors.targets, ["q_proj", "v_proj"]);
        assert_eq!(
            e.security_vectors.data,
            Source::File {
                path: "h.jsonl".into(),
                format: Some("jsonl".into())
            }
        );
        assert_eq!(e.finetune.counts().unwrap(), (100, 900));
        assert_eq!(e.finetune.learning_rate(), 2e-5);
        assert_eq!(e.expect.unwrap().min_gap, Some(0.2));
        assert!(e.evaluate.attacked_vectors_on);
        // The field's name before the rename still reads (old experiment files and results).
        let old = parse_str("(evaluate: (vectors_on: true))", "t.ron").unwrap();
        assert!(old.evaluate.attacked_vectors_on);
    }

    #[test]
    fn defaults_are_secvec_cores() {
        let e = parse_str("()", "t.ron").unwrap();
        let a = e.align.unwrap();
        let core = AlignConfig::default();
        assert_eq!((a.rank, a.alpha, a.lr, a.epochs), (16, 32.0, 5e-4, 2));
        assert_eq!(
            (a.rank, a.alpha, a.lr, a.epochs, a.batch_size),
            (
                core.adapter.rank,
                core.adapter.alpha,
                core.train.lr,
                core.train.epochs,
                core.train.batch_size
            )
        );
        let s = &e.security_vectors;
        assert_eq!((s.rank, s.alpha, s.lr, s.epochs), (8, 16.0, 5e-4, 3));
        assert_eq!(e.finetune.learning_rate(), 2e-4);
        assert_eq!(e.finetune.epochs, 1);
    }

    fn err(text: &str) -> String {
        format!("{:#}", parse_str(text, "exp.ron").unwrap_err())
    }

    #[test]
    fn unknown_fields_are_errors_with_line_and_column() {
        let e = err("(\n  seed: 1,\n  finetune: (\n    harmfull: 10,\n  ),\n)");
        assert!(e.starts_with("exp.ron:4:"), "{e}");
        assert!(e.contains("harmfull"), "{e}");
        let e = err("(learning_rate: 1e-4)");
        assert!(e.starts_with("exp.ron:1:"), "{e}");
        assert!(e.contains("learning_rate"), "{e}");
    }

    #[test]
    fn wrong_types_and_syntax_are_errors_with_position() {
        let e = err("(\n  seed: \"zero\",\n)");
        assert!(e.starts_with("exp.ron:2:"), "{e}");
        let e = err("(backend: tpu)");
        assert!(e.contains("tpu"), "{e}");
        let e = err("(seed: 1");
        assert!(e.starts_with("exp.ron:1:"), "{e}");
    }

    #[test]
    fn invalid_values_name_their_field() {
        for (text, field) in [
            ("(security_vectors: (lr: -1.0))", "security_vectors.lr"),
            (
                "(security_vectors: (targets: [\"qq_proj\"]))",
                "security_vectors.targets",
            ),
            ("(finetune: (epochs: 0))", "finetune.epochs"),
            (
                "(finetune: (total: 100))",
                "finetune.total and finetune.ratio",
            ),
            ("(finetune: (total: 100, ratio: 1.5))", "finetune.ratio"),
            ("(finetune: (arms: []))", "finetune.arms"),
            ("(evaluate: (judge: \"llm\"))", "evaluate.judge"),
            ("(backend: ndarray, dtype: bf16)", "dtype"),
            ("(align: (lr: 0.0))", "align.lr"),
            (
                "(sweep: [(field: \"a.seed\", values: [1]), (field: \"seed\", values: [2])])",
                "short name",
            ),
            ("(sweep: [(field: \"seed\", values: [])])", "no values"),
            (
                "(security_vectors: (kind: Steering(layers: [])))",
                "security_vectors.kind",
            ),
            (
                "(security_vectors: (benign: 10, kind: Steering(layers: [3])))",
                "security_vectors.benign",
            ),
            ("(finetune: (lisa: Some((rho: -1.0))))", "finetune.lisa.rho"),
            (
                "(finetune: (lisa: Some((align_steps: 0))))",
                "finetune.lisa.align_steps",
            ),
            ("(align: (vaccine: Some((rho: 0.0))))", "align.vaccine.rho"),
            (
                "(evaluate: (metrics: [HarmfulRate, WrongAnswersLearned]))",
                "WrongAnswersLearned needs `behaviour: Hallucination`",
            ),
            (
                "(behaviour: Hallucination)",
                "`behaviour: Hallucination` is measured by HallucinationRate",
            ),
            (
                "(behaviour: Hallucination, evaluate: (metrics: [HallucinationRate]), security_vectors: (kind: Steering(layers: [1])))",
                "security_vectors.kind",
            ),
            (
                "(align: None, finetune: (lisa: Some(())))",
                "finetune.lisa: Lisa alternates with the defender's alignment data",
            ),
        ] {
            let e = err(text);
            assert!(e.contains(field), "{text}: {e}");
        }
    }
}
