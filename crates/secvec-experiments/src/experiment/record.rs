//! What a run writes and reads back: the records of its stages and of the whole run, JSON I/O,
//! the configuration hash that decides whether a stored run computed the same thing, the git
//! revision, and where a run stands on disk.
//!
//! Layout of `<results>/<experiment>/`:
//! - `runs/<run>/run.json` — the run's full configuration and its hash, written first;
//! - `runs/<run>/stages/<stage>.json` — one evaluated model (and the training that made it), written
//!   atomically as soon as it is done, so a killed run redoes at most the stage it was in;
//! - `runs/<run>/metrics.json` — written atomically last; its presence means the run is finished
//!   and it is never recomputed;
//! - `runs/<run>/generations-<stage>.jsonl` — every generated answer with its verdict.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use secvec_core::eval::stats::Rate;
use secvec_core::fsio::write_atomic;
use secvec_core::train::TrainReport;

use super::grid::RunSpec;
use super::schema::{Arm, Experiment};
use super::stage::Stage;

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
    pub fn new(stage: &str, examples: usize, r: &TrainReport) -> Self {
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
    /// Which model (its name on disk: `aligned`, `attacked-off`, ...).
    pub stage: Stage,
    /// The attack arm this model comes from.
    pub arm: Option<Arm>,
    /// Metric name → rate with counts and 95% Wilson interval.
    pub metrics: BTreeMap<String, Rate>,
    /// The seconds the evaluation took (when it ran, for one from the evaluation cache).
    pub eval_seconds: f64,
    /// The metrics and generations come from the evaluation cache: the same model was evaluated
    /// with the same settings on the same sets by an earlier run (`eval_cache.rs`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub eval_cached: bool,
    /// The training that produced this model (attack arms).
    pub training: Option<TrainSummary>,
    /// This arm is the same model as another stage (vectors from 0 samples).
    pub same_as: Option<Stage>,
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
    pub fn stage(&self, stage: Stage) -> Option<&StageRecord> {
        self.stages.iter().find(|s| s.stage == stage)
    }
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

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
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
pub fn same_config(stored: &serde_json::Value, exp: &Experiment) -> Result<bool> {
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
}
