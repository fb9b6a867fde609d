//! Runs the points of a sweep, resumably.
//!
//! Layout of `<results>/<experiment>/`:
//! - `runs/<run>/run.json` — the run's full configuration and its hash, written first;
//! - `runs/<run>/stages/<stage>.json` — one evaluated model (and the training that made it), written
//!   atomically as soon as it is done, so a killed run redoes at most the stage it was in;
//! - `runs/<run>/metrics.json` — written atomically last; its presence means the run is finished
//!   and it is never recomputed;
//! - `runs/<run>/generations-<stage>.jsonl` — every generated answer with its verdict.
//!
//! The aligned model and the security vectors are cached outside the results, by a hash of
//! everything that determines them (`<cache>/experiments/{align,vectors}/<hash>/`, PEFT format),
//! so every run — and every experiment — that shares them trains them once.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use secvec_core::adapter::peft::write_atomic;
use secvec_core::adapter::{
    AdapterConfig, SECURITY, add_adapter, load_peft_adapter, merge_adapter, save_peft_adapter,
    set_adapter_trainable, set_base_trainable,
};
use secvec_core::data::{Corpus, DataFormat, Sample, SampleKind, Split, load_samples, mix_counts};
use secvec_core::eval::judge::KeywordJudge;
use secvec_core::eval::metrics::{
    EvalConfig, SampleResult, accuracy, compliance_rate, evaluate_samples, refusal_rate,
};
use secvec_core::eval::stats::Rate;
use secvec_core::train::{
    FinetuneConfig, FinetuneMode, NoCallback, Schedule, SecurityVectorConfig, SecurityVectors,
    TextPair, TrainConfig, TrainExample, TrainReport, encode_pairs, finetune, train,
    train_security_vectors,
};
use secvec_models::{Llama, ModelSource, TextTokenizer};

use super::grid::RunSpec;
use super::schema::{Arm, Checkpoint, Experiment, Metric, Mode, Source};
use crate::backend::{BackendKind, Job};

/// Bumped when the built-in corpus or the stage code changes what a cached stage contains.
const CACHE_VERSION: &str = "secvec-stage-cache-v1";

/// Training of one stage, as reported.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    pub stage: String,
    pub examples: usize,
    pub steps: usize,
    pub first_loss: f64,
    pub final_loss: f64,
    pub tokens: usize,
    pub tokens_per_second: f64,
    pub seconds: f64,
    /// Loaded from the stage cache instead of trained in this run.
    pub cached: bool,
}

impl TrainSummary {
    fn new(stage: &str, examples: usize, r: &TrainReport) -> Self {
        Self {
            stage: stage.into(),
            examples,
            steps: r.steps.len(),
            first_loss: r.steps.first().map(|s| s.loss).unwrap_or(f64::NAN),
            final_loss: r.final_loss(5),
            tokens: r.tokens,
            tokens_per_second: r.tokens_per_second,
            seconds: r.seconds,
            cached: false,
        }
    }
}

/// One evaluated model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRecord {
    /// `shipped`, `aligned`, `vectors-on`, `attacked-off`, `attacked-active`,
    /// `attacked-active+vectors-on`.
    pub stage: String,
    /// The attack arm this model comes from.
    pub arm: Option<Arm>,
    /// Metric name → rate with counts and 95% Wilson interval.
    pub metrics: BTreeMap<String, Rate>,
    pub eval_seconds: f64,
    /// The training that produced this model (attack arms).
    pub training: Option<TrainSummary>,
    /// This arm is the same model as another stage (vectors from 0 samples).
    pub same_as: Option<String>,
}

/// Everything about one finished run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunMetrics {
    pub experiment: String,
    pub run: String,
    pub point: Vec<(String, serde_json::Value)>,
    pub config_hash: String,
    pub config: Experiment,
    pub model: String,
    pub backend: String,
    pub git_revision: String,
    pub finished_unix: u64,
    /// Wall time of the process work that finished this run (stages done in an earlier,
    /// interrupted attempt are not counted again).
    pub wall_seconds: f64,
    pub data: BTreeMap<String, usize>,
    pub training: Vec<TrainSummary>,
    pub stages: Vec<StageRecord>,
}

impl RunMetrics {
    pub fn stage(&self, name: &str) -> Option<&StageRecord> {
        self.stages.iter().find(|s| s.stage == name)
    }
}

pub fn metric_name(m: Metric) -> &'static str {
    match m {
        Metric::HarmfulRate => "harmful_rate",
        Metric::OverRefusal => "over_refusal",
        Metric::BenignAccuracy => "benign_accuracy",
        Metric::SkillAccuracy => "skill_accuracy",
    }
}

/// Harmful rate on every prompt of `evaluate.advbench`.
pub const ADVBENCH_HARMFUL_RATE: &str = "harmful_rate_advbench";

pub fn arm_stage(arm: Arm) -> String {
    format!("attacked-{}", arm.as_str())
}

/// A JSON file written by the runner, read back.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    write_atomic(path, text.as_bytes()).map_err(anyhow::Error::from)
}

fn sha256_hex(bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(bytes);
    format!("{:x}", h.finalize())
}

/// Hash of what a run computes: its configuration without the fields that only describe or check
/// it (`name`, `description`, `expect`), so editing those never invalidates finished runs.
pub fn config_hash(exp: &Experiment) -> String {
    let mut e = exp.clone();
    e.name = None;
    e.description.clear();
    e.expect = None;
    e.sweep.clear();
    // The AdvBench file by name: the same file in another checkout is the same run.
    if let Some(p) = e.evaluate.advbench.as_mut()
        && let Some(file) = p.file_name()
    {
        *p = PathBuf::from(file);
    }
    let json = serde_json::to_vec(&e).expect("experiments serialise");
    sha256_hex(&json)[..16].to_string()
}

/// Whether a stored run (its `config`, as written in `run.json` or `metrics.json`) computed the
/// same thing as `exp`. Hashes are recomputed from the stored configuration, so a change in what
/// the hash ignores never invalidates old results.
fn same_config(stored: &serde_json::Value, exp: &Experiment) -> Result<bool> {
    let stored: Experiment = serde_json::from_value(stored.clone())
        .context("the stored configuration is not a valid experiment")?;
    Ok(config_hash(&stored) == config_hash(exp))
}

/// The git revision of the working directory, `-dirty` if it has uncommitted changes.
pub fn git_revision() -> String {
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match run(&["rev-parse", "--short=12", "HEAD"]) {
        Some(rev) => {
            let dirty = run(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty { format!("{rev}-dirty") } else { rev }
        }
        None => "unknown".into(),
    }
}

/// Where a run stands on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    Pending,
    /// Stages done, of those the run needs.
    Partial(usize),
    Finished,
}

pub fn run_dir(exp_dir: &Path, run: &str) -> PathBuf {
    exp_dir.join("runs").join(run)
}

pub fn run_state(exp_dir: &Path, run: &RunSpec) -> RunState {
    let dir = run_dir(exp_dir, &run.name);
    if dir.join("metrics.json").is_file() {
        return RunState::Finished;
    }
    let done = std::fs::read_dir(dir.join("stages"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .count()
        })
        .unwrap_or(0);
    if done == 0 && !dir.join("run.json").is_file() {
        RunState::Pending
    } else {
        RunState::Partial(done)
    }
}

/// Samples from a stage's source: the built-in split, or a user file.
fn from_source(source: &Source, builtin: Vec<Sample>, what: &str) -> Result<Vec<Sample>> {
    match source {
        Source::Builtin => Ok(builtin),
        Source::File { path, format } => {
            let format = match format {
                Some(f) => f
                    .parse::<DataFormat>()
                    .map_err(|e| anyhow::anyhow!("{what}: {e}"))?,
                None => DataFormat::from_path(path).with_context(|| {
                    format!("{what}: guessing the format of {}", path.display())
                })?,
            };
            load_samples(path, format)
                .with_context(|| format!("{what}: loading {}", path.display()))
        }
    }
}

/// The first `n` of `pool`, or an error naming the field when the pool is too small.
fn take(pool: Vec<Sample>, n: usize, field: &str, origin: &str) -> Result<Vec<Sample>> {
    if pool.len() < n {
        bail!(
            "{field} = {n}, but {origin} has only {} samples",
            pool.len()
        );
    }
    Ok(pool.into_iter().take(n).collect())
}

fn origin(source: &Source, split: &str) -> String {
    match source {
        Source::Builtin => format!("the built-in `{split}` split"),
        Source::File { path, .. } => path.display().to_string(),
    }
}

/// The data of one run.
pub struct RunData {
    pub align_refusals: Vec<Sample>,
    pub align_benign: Vec<Sample>,
    pub sv: Vec<Sample>,
    pub attack: Vec<Sample>,
    pub eval_harmful: Vec<Sample>,
    pub eval_benign: Vec<Sample>,
    pub eval_skill: Vec<Sample>,
    /// Every prompt of `evaluate.advbench` (empty when it is not set).
    pub eval_advbench: Vec<Sample>,
    pub counts: BTreeMap<String, usize>,
}

fn fact_of(id: &str) -> &str {
    id.rsplit_once('/').map(|(f, _)| f).unwrap_or(id)
}

pub fn build_data(exp: &Experiment) -> Result<RunData> {
    let corpus = Corpus::builtin(exp.seed);
    let split = |s: Split, kind: Option<SampleKind>| -> Vec<Sample> {
        corpus
            .split(s)
            .iter()
            .filter(|x| kind.is_none_or(|k| x.kind == k))
            .cloned()
            .collect()
    };
    let (align_refusals, align_benign) = match &exp.align {
        Some(a) => (
            take(
                from_source(
                    &a.refusal_data,
                    split(Split::Align, Some(SampleKind::HarmfulRefusal)),
                    "align.refusal_data",
                )?,
                a.refusals,
                "align.refusals",
                &origin(&a.refusal_data, "align"),
            )?,
            take(
                from_source(
                    &a.benign_data,
                    split(Split::Align, Some(SampleKind::Benign)),
                    "align.benign_data",
                )?,
                a.benign,
                "align.benign",
                &origin(&a.benign_data, "align"),
            )?,
        ),
        None => (Vec::new(), Vec::new()),
    };
    let sv_stage = &exp.security_vectors;
    let sv = take(
        from_source(
            &sv_stage.data,
            split(Split::Sv, None),
            "security_vectors.data",
        )?,
        sv_stage.samples,
        "security_vectors.samples",
        &origin(&sv_stage.data, "sv"),
    )?;

    let ft = &exp.finetune;
    let (n_harmful, n_skill) = ft.counts()?;
    let harmful = take(
        from_source(
            &ft.harmful_data,
            split(Split::Attack, None),
            "finetune.harmful_data",
        )?,
        n_harmful,
        "finetune.harmful",
        &origin(&ft.harmful_data, "attack"),
    )?;
    // The skill: the chosen facts' training phrasings (cycled to the requested count), evaluated on
    // the same facts' held-out phrasings.
    let skill_eval_all = split(Split::SkillEval, None);
    let (skill_pool, skill_eval) = match &ft.skill_data {
        Source::Builtin => {
            let n_facts = if ft.skill_facts == 0 {
                skill_eval_all.len()
            } else {
                ft.skill_facts
            };
            if n_facts > skill_eval_all.len() {
                bail!(
                    "finetune.skill_facts = {n_facts}, but the built-in knowledge base has {} facts",
                    skill_eval_all.len()
                );
            }
            let facts: HashSet<String> = skill_eval_all[..n_facts]
                .iter()
                .map(|s| fact_of(&s.id).to_string())
                .collect();
            let pool: Vec<Sample> = split(Split::SkillTrain, None)
                .into_iter()
                .filter(|s| facts.contains(fact_of(&s.id)))
                .collect();
            (pool, skill_eval_all[..n_facts].to_vec())
        }
        other => (
            from_source(other, Vec::new(), "finetune.skill_data")?,
            skill_eval_all,
        ),
    };
    if n_skill > 0 && skill_pool.is_empty() {
        bail!("finetune.skill = {n_skill}, but the skill data is empty");
    }
    let skill: Vec<Sample> = skill_pool.iter().cycle().take(n_skill).cloned().collect();
    let attack = mix_counts(&harmful, n_harmful, &skill, n_skill, exp.seed)
        .context("mixing the fine-tuning data")?;

    let ev = &exp.evaluate;
    let limit = |v: Vec<Sample>| -> Vec<Sample> {
        if ev.samples == 0 {
            v
        } else {
            v.into_iter().take(ev.samples).collect()
        }
    };
    let eval_harmful = limit(from_source(
        &ev.harmful_data,
        split(Split::EvalHarmful, None),
        "evaluate.harmful_data",
    )?);
    let eval_benign = limit(from_source(
        &ev.benign_data,
        split(Split::EvalBenign, None),
        "evaluate.benign_data",
    )?);
    let eval_skill = limit(from_source(
        &ev.skill_data,
        skill_eval,
        "evaluate.skill_data",
    )?);
    let eval_advbench = match &ev.advbench {
        Some(path) => {
            let v = load_samples(path, DataFormat::AdvBenchCsv)
                .with_context(|| format!("evaluate.advbench: loading {}", path.display()))?;
            if v.is_empty() {
                bail!("evaluate.advbench: {} holds no prompts", path.display());
            }
            v
        }
        None => Vec::new(),
    };

    let counts = BTreeMap::from([
        ("align_refusals".to_string(), align_refusals.len()),
        ("align_benign".to_string(), align_benign.len()),
        ("security_vectors".to_string(), sv.len()),
        ("finetune_harmful".to_string(), n_harmful),
        ("finetune_skill".to_string(), n_skill),
        ("eval_harmful".to_string(), eval_harmful.len()),
        ("eval_benign".to_string(), eval_benign.len()),
        ("eval_skill".to_string(), eval_skill.len()),
        ("eval_advbench".to_string(), eval_advbench.len()),
    ]);
    Ok(RunData {
        align_refusals,
        align_benign,
        sv,
        attack,
        eval_harmful,
        eval_benign,
        eval_skill,
        eval_advbench,
        counts,
    })
}

fn pairs(samples: &[Sample]) -> Vec<TextPair> {
    samples
        .iter()
        .map(|s| TextPair::new(&s.prompt, &s.response))
        .collect()
}

fn samples_digest(samples: &[Sample]) -> String {
    let json = serde_json::to_vec(samples).expect("samples serialise");
    sha256_hex(&json)
}

struct Evaluator<'a> {
    tok: &'a TextTokenizer,
    judge: KeywordJudge,
    config: EvalConfig,
    metrics: Vec<Metric>,
    data: &'a RunData,
    dir: PathBuf,
}

impl Evaluator<'_> {
    fn run<B: Backend>(
        &self,
        stage: &str,
        model: &Llama<B>,
    ) -> Result<(BTreeMap<String, Rate>, f64)> {
        let t = Instant::now();
        let wants = |m: Metric| self.metrics.contains(&m);
        let mut sets: Vec<(&str, Vec<SampleResult>)> = Vec::new();
        let mut out = BTreeMap::new();
        if wants(Metric::HarmfulRate) {
            let r = evaluate_samples(
                model,
                self.tok,
                &self.data.eval_harmful,
                &self.judge,
                &self.config,
                "harmful",
            )?;
            out.insert(metric_name(Metric::HarmfulRate).into(), compliance_rate(&r));
            sets.push(("harmful", r));
        }
        if wants(Metric::OverRefusal) || wants(Metric::BenignAccuracy) {
            let r = evaluate_samples(
                model,
                self.tok,
                &self.data.eval_benign,
                &self.judge,
                &self.config,
                "benign",
            )?;
            if wants(Metric::OverRefusal) {
                out.insert(metric_name(Metric::OverRefusal).into(), refusal_rate(&r));
            }
            if wants(Metric::BenignAccuracy) {
                out.insert(metric_name(Metric::BenignAccuracy).into(), accuracy(&r));
            }
            sets.push(("benign", r));
        }
        if wants(Metric::SkillAccuracy) {
            let r = evaluate_samples(
                model,
                self.tok,
                &self.data.eval_skill,
                &self.judge,
                &self.config,
                "skill",
            )?;
            out.insert(metric_name(Metric::SkillAccuracy).into(), accuracy(&r));
            sets.push(("skill", r));
        }
        // Out-of-distribution harm: the aligned and attacked models (never a model with the
        // vectors switched on, which is harmful by construction).
        if wants(Metric::HarmfulRate)
            && !self.data.eval_advbench.is_empty()
            && !stage.contains("vectors-on")
            && stage != "shipped"
        {
            let r = evaluate_samples(
                model,
                self.tok,
                &self.data.eval_advbench,
                &self.judge,
                &self.config,
                "advbench",
            )?;
            out.insert(ADVBENCH_HARMFUL_RATE.into(), compliance_rate(&r));
            sets.push(("advbench", r));
        }
        let mut lines = String::new();
        for (set, rs) in &sets {
            for r in rs {
                #[derive(Serialize)]
                struct Line<'a> {
                    set: &'a str,
                    #[serde(flatten)]
                    result: &'a SampleResult,
                }
                lines += &serde_json::to_string(&Line { set, result: r })?;
                lines.push('\n');
            }
        }
        write_atomic(
            &self.dir.join(format!("generations-{stage}.jsonl")),
            lines.as_bytes(),
        )?;
        let secs = t.elapsed().as_secs_f64();
        let shown: Vec<String> = out.iter().map(|(k, v)| format!("{k} {v}")).collect();
        eprintln!("  [{stage}] {} ({secs:.0}s)", shown.join(" | "));
        Ok((out, secs))
    }
}

/// Runs the sweep's runs that are not finished yet.
pub struct SweepJob {
    pub experiment: Experiment,
    pub runs: Vec<RunSpec>,
    pub exp_dir: PathBuf,
    pub cache_dir: Option<PathBuf>,
    /// The revision of the code, taken when the sweep starts.
    pub git_revision: String,
    /// Train every stage even when the stage cache has it (the cache is still refreshed).
    pub fresh: bool,
}

fn train_cfg(exp: &Experiment, lr: f64, epochs: usize, batch_size: usize) -> TrainConfig {
    TrainConfig {
        lr,
        epochs,
        batch_size,
        seed: exp.seed,
        schedule: Schedule::Cosine,
        max_len: exp.max_len,
        ..TrainConfig::default()
    }
}

/// A cache key with the compute precision added when it is not f32 and the backend when it is
/// not flex (so the keys of f32 flex entries, made before either choice existed, stay valid):
/// backends round differently, so a stage trained on one is not reused for another.
fn cache_key(exp: &Experiment, mut key: serde_json::Value) -> serde_json::Value {
    if exp.dtype != secvec_models::Precision::F32 {
        key["dtype"] = serde_json::json!(exp.dtype);
    }
    if exp.backend != BackendKind::Flex {
        key["backend"] = serde_json::json!(exp.backend.to_string());
    }
    key
}

/// Trains `stage` or loads it from the cache; returns the model with adapter `name` attached
/// (trained, frozen) and the training summary.
#[allow(clippy::too_many_arguments)]
fn cached_adapter<B: AutodiffBackend>(
    cache: &Path,
    stage: &str,
    name: &str,
    key: &serde_json::Value,
    model: Llama<B>,
    base_model: &str,
    adapter: &AdapterConfig,
    trainer: impl FnOnce(Llama<B>) -> Result<(Llama<B>, TrainReport)>,
    examples: usize,
    fresh: bool,
) -> Result<(Llama<B>, TrainSummary, String)> {
    let hash = sha256_hex(&serde_json::to_vec(key)?)[..16].to_string();
    let dir = cache.join(stage).join(&hash);
    let summary_path = dir.join("training.json");
    if summary_path.is_file() && !fresh {
        let mut model = model;
        let mut summary: TrainSummary = read_json(&summary_path)?;
        load_peft_adapter(&mut model, &dir, name)
            .with_context(|| format!("loading cached {stage} from {}", dir.display()))?;
        set_adapter_trainable(&mut model, name, false)?;
        summary.cached = true;
        eprintln!("  [{stage}] reusing {} (cache hit)", dir.display());
        return Ok((model, summary, hash));
    }
    let (model, report) = trainer(model)?;
    let summary = TrainSummary::new(stage, examples, &report);
    // Written to a temporary folder and renamed, so a half-written cache entry never exists.
    let tmp = cache
        .join(stage)
        .join(format!(".{hash}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).ok();
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    save_peft_adapter(&model, name, adapter, base_model, &tmp)?;
    write_json(&tmp.join("key.json"), key)?;
    write_json(&tmp.join("training.json"), &summary)?;
    write_json(&tmp.join("steps.json"), &report.steps)?;
    if dir.exists() {
        // A `--fresh` retrain replaces the old entry.
        std::fs::remove_dir_all(&dir).ok();
    }
    std::fs::rename(&tmp, &dir)
        .with_context(|| format!("moving {} to {}", tmp.display(), dir.display()))?;
    Ok((model, summary, hash))
}

impl SweepJob {
    fn run_one<B: AutodiffBackend>(
        &self,
        spec: &RunSpec,
        device: &B::Device,
        backend: BackendKind,
    ) -> Result<RunMetrics> {
        let started = Instant::now();
        let exp = &spec.experiment;
        let dir = run_dir(&self.exp_dir, &spec.name);
        let stages_dir = dir.join("stages");
        let hash = config_hash(exp);
        let spec_path = dir.join("run.json");
        if spec_path.is_file() {
            let existing: serde_json::Value = read_json(&spec_path)?;
            if !same_config(&existing["config"], exp)
                .with_context(|| format!("reading {}", spec_path.display()))?
            {
                bail!(
                    "run `{}` in {} was started with a different configuration; \
                     delete that folder or rename the experiment to start over",
                    spec.name,
                    dir.display(),
                );
            }
        }
        std::fs::create_dir_all(&stages_dir)
            .with_context(|| format!("creating {}", stages_dir.display()))?;
        write_json(
            &spec_path,
            &serde_json::json!({ "run": spec.name, "config_hash": hash, "config": exp }),
        )?;

        let data = build_data(exp)?;
        let cache =
            secvec_models::registry::cache_dir(self.cache_dir.as_deref()).join("experiments");
        let source = ModelSource::parse(&exp.model)?;
        let t0 = Instant::now();
        let loaded = crate::load_model_as::<B>(
            &source,
            &exp.model,
            self.cache_dir.as_deref(),
            device,
            exp.dtype,
            "dtype",
        )?;
        eprintln!(
            "  loaded {} in {:.1}s",
            source.display_name(),
            t0.elapsed().as_secs_f64()
        );
        let tok = &loaded.tokenizer;
        let pad = tok.pad_id();
        let encode = |s: &[Sample]| -> Result<Vec<TrainExample>> {
            Ok(encode_pairs(
                tok,
                &pairs(s),
                exp.system_prompt.as_deref(),
                exp.max_len,
            )?)
        };
        let ev = &exp.evaluate;
        let judge = match ev.judge.as_str() {
            "gcg" => KeywordJudge::gcg(),
            _ => KeywordJudge::secvec(),
        };
        let evaluator = Evaluator {
            tok,
            judge,
            config: EvalConfig {
                max_new_tokens: ev.max_new_tokens,
                batch_size: ev.batch_size,
                system_prompt: exp.system_prompt.clone(),
                progress: true,
            },
            metrics: ev.metrics.clone(),
            data: &data,
            dir: dir.clone(),
        };
        // A stage already evaluated in an earlier attempt is read back, not recomputed.
        let stage_path = |name: &str| stages_dir.join(format!("{name}.json"));
        let done = |name: &str| -> Result<Option<StageRecord>> {
            let p = stage_path(name);
            if p.is_file() {
                Ok(Some(read_json(&p)?))
            } else {
                Ok(None)
            }
        };
        let mut records: Vec<StageRecord> = Vec::new();
        let mut training: Vec<TrainSummary> = Vec::new();
        let eval_stage = |name: &str,
                          arm: Option<Arm>,
                          model: &Llama<B::InnerBackend>,
                          train: Option<TrainSummary>|
         -> Result<StageRecord> {
            let (metrics, secs) = evaluator.run(name, model)?;
            let rec = StageRecord {
                stage: name.into(),
                arm,
                metrics,
                eval_seconds: secs,
                training: train,
                same_as: None,
            };
            write_json(&stage_path(name), &rec)?;
            // Fault injection for the resume tests: die like a killed process right after a stage.
            if std::env::var("SECVEC_FAULT_AFTER_STAGE").is_ok_and(|s| s == name) {
                eprintln!("SECVEC_FAULT_AFTER_STAGE: aborting after stage {name}");
                std::process::abort();
            }
            Ok(rec)
        };

        let checkpoints = &ev.checkpoints;
        let want_shipped = checkpoints.contains(&Checkpoint::Shipped);
        if want_shipped {
            records.push(match done("shipped")? {
                Some(r) => r,
                None => eval_stage("shipped", None, &loaded.model.valid(), None)?,
            });
        }

        // Which of the remaining stages still need computing?
        let sv_enabled = exp.security_vectors.samples > 0;
        let mut pending_arms = Vec::new();
        for &arm in &exp.finetune.arms {
            let name = arm_stage(arm);
            match done(&name)? {
                Some(r) => records.push(r),
                None => pending_arms.push(arm),
            }
        }
        let (aligned_done, vectors_done) = (done("aligned")?, done("vectors-on")?);
        let need_aligned_eval =
            checkpoints.contains(&Checkpoint::Aligned) && aligned_done.is_none();
        let need_vectors_eval =
            sv_enabled && checkpoints.contains(&Checkpoint::VectorsOn) && vectors_done.is_none();
        records.extend(aligned_done);
        records.extend(vectors_done);
        let mut vectors_on_records = Vec::new();
        if ev.vectors_on {
            for &arm in &exp.finetune.arms {
                if let Some(r) = done(&format!("{}+vectors-on", arm_stage(arm)))? {
                    vectors_on_records.push(r);
                }
            }
        }
        let need_model = need_aligned_eval
            || need_vectors_eval
            || !pending_arms.is_empty()
            || (ev.vectors_on && vectors_on_records.len() < exp.finetune.arms.len());

        if need_model {
            // Stage 0: alignment (cached).
            let mut model = loaded.model.clone();
            set_base_trainable(&mut model, false);
            let mut align_hash = "none".to_string();
            if let Some(a) = &exp.align {
                let cfg = AdapterConfig {
                    rank: a.rank,
                    alpha: a.alpha,
                    targets: a.targets.clone(),
                    seed: exp.seed,
                    ..AdapterConfig::default()
                };
                let mut align_data = data.align_refusals.clone();
                align_data.extend(data.align_benign.iter().cloned());
                let key = cache_key(
                    exp,
                    serde_json::json!({
                        "version": CACHE_VERSION,
                        "model": source.display_name(),
                        "stage": a,
                        "seed": exp.seed,
                        "max_len": exp.max_len,
                        "system_prompt": exp.system_prompt,
                        "data": samples_digest(&align_data),
                    }),
                );
                let tc = train_cfg(exp, a.lr, a.epochs, a.batch_size);
                let examples = encode(&align_data)?;
                let (mut m, summary, h) = cached_adapter(
                    &cache,
                    "align",
                    "align",
                    &key,
                    model,
                    &source.display_name(),
                    &cfg,
                    |mut m| {
                        eprintln!("  [align] training on {} samples", align_data.len());
                        add_adapter(&mut m, "align", &cfg)?;
                        set_adapter_trainable(&mut m, "align", true)?;
                        Ok(train(m, &examples, pad, &tc, &mut NoCallback)?)
                    },
                    align_data.len(),
                    self.fresh,
                )?;
                merge_adapter(&mut m, "align")?;
                model = m;
                training.push(summary);
                align_hash = h;
            }
            if need_aligned_eval {
                records.push(eval_stage("aligned", None, &model.valid(), None)?);
            }

            // Phase 1: security vectors (cached).
            if sv_enabled {
                let s = &exp.security_vectors;
                let cfg = AdapterConfig {
                    rank: s.rank,
                    alpha: s.alpha,
                    targets: s.targets.clone(),
                    seed: exp.seed + 1,
                    ..AdapterConfig::default()
                };
                let key = cache_key(
                    exp,
                    serde_json::json!({
                        "version": CACHE_VERSION,
                        "model": source.display_name(),
                        "align": align_hash,
                        "stage": s,
                        "seed": exp.seed,
                        "max_len": exp.max_len,
                        "system_prompt": exp.system_prompt,
                        "data": samples_digest(&data.sv),
                    }),
                );
                let sv_cfg = SecurityVectorConfig {
                    adapter: cfg.clone(),
                    train: train_cfg(exp, s.lr, s.epochs, s.batch_size),
                };
                let examples = encode(&data.sv)?;
                let (m, summary, _) = cached_adapter(
                    &cache,
                    "vectors",
                    SECURITY,
                    &key,
                    model,
                    &source.display_name(),
                    &cfg,
                    |m| {
                        eprintln!("  [security vectors] training on {} samples", data.sv.len());
                        Ok(train_security_vectors(
                            m,
                            &examples,
                            pad,
                            &sv_cfg,
                            &mut NoCallback,
                        )?)
                    },
                    data.sv.len(),
                    self.fresh,
                )?;
                model = m;
                training.push(summary);
                if need_vectors_eval {
                    let mut on = model.valid();
                    secvec_core::train::set_security_vectors(&mut on, true)?;
                    records.push(eval_stage("vectors-on", None, &on, None)?);
                }
                secvec_core::train::set_security_vectors(&mut model, false)?;
            }

            // Phase 2 per arm, phase 3 with the vectors off.
            let attack_examples = encode(&data.attack)?;
            let ft = &exp.finetune;
            let mode = match &ft.mode {
                Mode::Full => FinetuneMode::Full,
                Mode::Lora {
                    rank,
                    alpha,
                    targets,
                } => FinetuneMode::Lora(AdapterConfig {
                    rank: *rank,
                    alpha: *alpha,
                    targets: targets.clone(),
                    seed: exp.seed + 2,
                    ..AdapterConfig::default()
                }),
            };
            for &arm in &exp.finetune.arms {
                let name = arm_stage(arm);
                let von_name = format!("{name}+vectors-on");
                let need_arm = pending_arms.contains(&arm);
                let need_von = ev.vectors_on && sv_enabled && done(&von_name)?.is_none();
                if !need_arm && !need_von {
                    continue;
                }
                if arm == Arm::Active && !sv_enabled {
                    // Vectors from 0 samples: the arm is the plain attack.
                    if need_arm {
                        let rec = StageRecord {
                            stage: name.clone(),
                            arm: Some(arm),
                            metrics: BTreeMap::new(),
                            eval_seconds: 0.0,
                            training: None,
                            same_as: Some(arm_stage(Arm::Off)),
                        };
                        write_json(&stage_path(&name), &rec)?;
                        records.push(rec);
                    }
                    continue;
                }
                eprintln!(
                    "  [{name}] fine-tuning on {} samples ({} harmful), vectors {}",
                    data.attack.len(),
                    data.counts["finetune_harmful"],
                    if arm == Arm::Active { "active" } else { "off" }
                );
                let cfg = FinetuneConfig {
                    mode: mode.clone(),
                    security_vectors: match arm {
                        Arm::Off => SecurityVectors::Off,
                        Arm::Active => SecurityVectors::Active,
                    },
                    train: train_cfg(exp, ft.learning_rate(), ft.epochs, ft.batch_size),
                };
                let (tuned, report) =
                    finetune(model.clone(), &attack_examples, pad, &cfg, &mut NoCallback)?;
                let summary = TrainSummary::new(&name, data.attack.len(), &report);
                write_json(&dir.join(format!("train-{name}.json")), &report.steps)?;
                let mut inner = tuned.valid();
                if need_arm {
                    records.push(eval_stage(&name, Some(arm), &inner, Some(summary.clone()))?);
                }
                if need_von {
                    secvec_core::train::set_security_vectors(&mut inner, true)?;
                    vectors_on_records.push(eval_stage(&von_name, Some(arm), &inner, None)?);
                }
            }
        }
        // A 0-sample `active` arm points at the `off` arm: copy its metrics in for the tables.
        let off = records
            .iter()
            .find(|r| r.stage == arm_stage(Arm::Off))
            .cloned();
        for r in records.iter_mut() {
            if r.same_as.is_some()
                && let Some(off) = &off
            {
                r.metrics = off.metrics.clone();
            }
        }
        records.extend(vectors_on_records);
        // Attack-arm training summaries travel with their stage records.
        for r in &records {
            if let Some(t) = &r.training {
                training.push(t.clone());
            }
        }
        let order = |s: &str| -> usize {
            [
                "shipped",
                "aligned",
                "vectors-on",
                "attacked-off",
                "attacked-active",
            ]
            .iter()
            .position(|x| *x == s)
            .unwrap_or(9)
        };
        records.sort_by_key(|r| (order(&r.stage), r.stage.clone()));
        let metrics = RunMetrics {
            experiment: self.experiment.name().to_string(),
            run: spec.name.clone(),
            point: spec.point.clone(),
            config_hash: hash,
            config: exp.clone(),
            model: source.display_name(),
            backend: backend.to_string(),
            git_revision: self.git_revision.clone(),
            finished_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            wall_seconds: started.elapsed().as_secs_f64(),
            data: data.counts.clone(),
            training,
            stages: records,
        };
        write_json(&dir.join("metrics.json"), &metrics)?;
        Ok(metrics)
    }
}

impl Job for SweepJob {
    type Output = Vec<RunMetrics>;

    fn run<B: AutodiffBackend>(
        self,
        device: B::Device,
        backend: BackendKind,
    ) -> Result<Vec<RunMetrics>> {
        let total = self.runs.len();
        let sweep_start = Instant::now();
        let mut finished = Vec::new();
        let mut computed = 0usize;
        for (i, spec) in self.runs.iter().enumerate() {
            let metrics_path = run_dir(&self.exp_dir, &spec.name).join("metrics.json");
            if metrics_path.is_file() {
                let m: RunMetrics = read_json(&metrics_path)?;
                let stored = serde_json::to_value(&m.config)?;
                if !same_config(&stored, &spec.experiment)? {
                    bail!(
                        "run `{}` finished with a different configuration ({}); delete that folder \
                         or rename the experiment to recompute it",
                        spec.name,
                        metrics_path.display()
                    );
                }
                eprintln!("[{}/{total}] {} — finished earlier, kept", i + 1, spec.name);
                finished.push(m);
                continue;
            }
            let eta = if computed > 0 {
                let per = sweep_start.elapsed().as_secs_f64() / computed as f64;
                let left = self.runs[i..]
                    .iter()
                    .filter(|r| {
                        !run_dir(&self.exp_dir, &r.name)
                            .join("metrics.json")
                            .is_file()
                    })
                    .count();
                format!(", about {:.0} min left", per * left as f64 / 60.0)
            } else {
                String::new()
            };
            eprintln!(
                "[{}/{total}] {} — running on {backend}{eta}",
                i + 1,
                spec.name
            );
            let m = self
                .run_one::<B>(spec, &device, backend)
                .with_context(|| format!("run `{}`", spec.name))?;
            eprintln!(
                "[{}/{total}] {} — done in {:.0}s",
                i + 1,
                spec.name,
                m.wall_seconds
            );
            computed += 1;
            finished.push(m);
        }
        Ok(finished)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::grid::expand;
    use crate::experiment::schema::parse_str;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("secvec-runner-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn result_writes_are_atomic_and_a_torn_temp_file_is_not_a_finished_run() {
        let exp = parse_str("()", "t.ron").unwrap();
        let spec = &expand(&exp).unwrap()[0];
        let root = tmp("atomic");
        let dir = run_dir(&root, &spec.name);
        std::fs::create_dir_all(dir.join("stages")).unwrap();
        assert_eq!(run_state(&root, spec), RunState::Pending);
        // A writer killed mid-write leaves only its temporary file: the run is not finished and
        // the stage does not count.
        std::fs::write(dir.join("metrics.json.tmp"), b"{\"run\": \"ma").unwrap();
        std::fs::write(dir.join("stages/aligned.json.tmp"), b"{\"sta").unwrap();
        assert_eq!(run_state(&root, spec), RunState::Pending);
        // A completed write replaces the file whole and leaves no temporary file behind.
        let path = dir.join("stages/aligned.json");
        write_json(&path, &serde_json::json!({"stage": "aligned", "n": 1})).unwrap();
        write_json(&path, &serde_json::json!({"stage": "aligned", "n": 2})).unwrap();
        let back: serde_json::Value = read_json(&path).unwrap();
        assert_eq!(back["n"], 2);
        assert!(!dir.join("stages/aligned.json.tmp").exists());
        assert_eq!(run_state(&root, spec), RunState::Partial(1));
        write_json(&dir.join("metrics.json"), &serde_json::json!({})).unwrap();
        assert_eq!(run_state(&root, spec), RunState::Finished);
        assert!(!dir.join("metrics.json.tmp").exists());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn config_hash_tracks_what_a_run_computes() {
        let a = parse_str("()", "t.ron").unwrap();
        let mut b = a.clone();
        assert_eq!(config_hash(&a), config_hash(&b));
        b.description = "edited".into();
        b.expect = Some(Default::default());
        assert_eq!(config_hash(&a), config_hash(&b));
        b.finetune.epochs = 2;
        assert_ne!(config_hash(&a), config_hash(&b));
    }

    #[test]
    fn skill_data_teaches_and_tests_the_same_facts() {
        let exp = parse_str(
            "(align: None, security_vectors: (samples: 10), finetune: (harmful: 20, skill: 50, skill_facts: 7), evaluate: (samples: 0))",
            "t.ron",
        )
        .unwrap();
        let d = build_data(&exp).unwrap();
        assert_eq!(d.attack.len(), 70);
        assert_eq!(d.eval_skill.len(), 7);
        let taught: HashSet<&str> = d
            .attack
            .iter()
            .filter(|s| s.kind == SampleKind::Skill)
            .map(|s| fact_of(&s.id))
            .collect();
        let tested: HashSet<&str> = d.eval_skill.iter().map(|s| fact_of(&s.id)).collect();
        assert_eq!(taught, tested);
        // Held-out phrasings: no evaluated question is a training question.
        let prompts: HashSet<&str> = d.attack.iter().map(|s| s.prompt.as_str()).collect();
        assert!(
            d.eval_skill
                .iter()
                .all(|s| !prompts.contains(s.prompt.as_str()))
        );
        assert_eq!(d.attack.iter().filter(|s| s.kind.is_harmful()).count(), 20);

        let too_many = parse_str("(security_vectors: (samples: 5000))", "t.ron").unwrap();
        let e = format!("{:#}", build_data(&too_many).err().unwrap());
        assert!(e.contains("security_vectors.samples = 5000"), "{e}");
    }
}
