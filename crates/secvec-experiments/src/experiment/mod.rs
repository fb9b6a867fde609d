//! Declarative experiments: a RON file describes the pipeline (align → security vectors →
//! fine-tune with and without them → evaluate) and a sweep; `run` executes the runs that are not
//! finished, and writes per-run metrics, tables and plots under `<results>/<name>/`.

pub mod cache;
mod context;
pub mod convert;
pub mod data;
pub mod eval_cache;
pub mod evaluator;
mod expect;
pub mod grid;
pub mod lock;
mod plan;
mod plot;
pub mod record;
pub mod report;
pub mod runner;
pub mod schema;
pub mod stage;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::backend::{BackendKind, dispatch};
pub use expect::check_expectations;
use grid::RunSpec;
use record::{RunMetrics, RunState, run_state};
use runner::SweepJob;
use schema::Experiment;

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// The experiment file (RON).
    pub file: PathBuf,
    /// List the runs and their state, run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Run only this run (by name, as `--dry-run` lists it).
    #[arg(long)]
    pub only: Option<String>,
    /// Folder that holds `<experiment name>/`.
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// Override the file's backend.
    #[arg(long, value_enum)]
    pub backend: Option<BackendKind>,
    /// Override the file's compute precision (f32, bf16, f16). Results then go to
    /// `<name>-<dtype>/`, so they never mix with the file's own.
    #[arg(long)]
    pub dtype: Option<secvec_models::Precision>,
    /// Cache directory for models and cached stages (default: $SECVEC_CACHE_DIR or ~/.cache/secvec).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Retrain the cached stages (the aligned model, the security vectors, the `off` arm's task
    /// LoRA) and evaluate again, even if the stage and evaluation caches have them.
    #[arg(long)]
    pub fresh: bool,
    /// Run only shard I of N (0-based): the runs at positions I, I+N, I+2N, ... of the sweep, so
    /// that N processes — a Slurm job array, machines sharing the results folder — split it.
    /// Defaults to `SLURM_ARRAY_TASK_ID`/`SLURM_ARRAY_TASK_COUNT` when Slurm sets them.
    #[arg(long, value_name = "I/N", conflicts_with = "only")]
    pub shard: Option<Shard>,
    /// Run nothing: write the tables and plots over every finished run and check the
    /// expectations (after the shards of a sweep have finished).
    #[arg(long, conflicts_with_all = ["only", "shard", "dry_run"])]
    pub summarize: bool,
}

/// One of N shards of a sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}`: expected I/N, e.g. 0/4"))?;
        let index: usize = i
            .trim()
            .parse()
            .map_err(|e| format!("`{s}`: shard index `{i}`: {e}"))?;
        let count: usize = n
            .trim()
            .parse()
            .map_err(|e| format!("`{s}`: shard count `{n}`: {e}"))?;
        Shard::new(index, count).map_err(|e| format!("`{s}`: {e}"))
    }
}

impl Shard {
    pub fn new(index: usize, count: usize) -> Result<Self, String> {
        if count == 0 || index >= count {
            return Err(format!(
                "shard {index} of {count} does not exist (0 ≤ I < N)"
            ));
        }
        Ok(Self { index, count })
    }

    /// The shard a Slurm job array task is (`SLURM_ARRAY_TASK_ID` counted from
    /// `SLURM_ARRAY_TASK_MIN`, of `SLURM_ARRAY_TASK_COUNT`), if Slurm set the variables.
    pub fn from_slurm(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let (Some(id), Some(count)) = (var("SLURM_ARRAY_TASK_ID"), var("SLURM_ARRAY_TASK_COUNT"))
        else {
            return Ok(None);
        };
        let num = |name: &str, v: &str| -> Result<usize> {
            v.trim()
                .parse()
                .with_context(|| format!("{name}={v} is not a number"))
        };
        let id = num("SLURM_ARRAY_TASK_ID", &id)?;
        let count = num("SLURM_ARRAY_TASK_COUNT", &count)?;
        let min = match var("SLURM_ARRAY_TASK_MIN") {
            Some(m) => num("SLURM_ARRAY_TASK_MIN", &m)?,
            None => 0,
        };
        let index = id.checked_sub(min).ok_or_else(|| {
            anyhow::anyhow!("SLURM_ARRAY_TASK_ID={id} is below SLURM_ARRAY_TASK_MIN={min}")
        })?;
        Shard::new(index, count)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("from Slurm's job array variables: {e}"))
    }

    /// Whether the run at `position` of the sweep is this shard's.
    pub fn owns(&self, position: usize) -> bool {
        position % self.count == self.index
    }
}

pub fn run(args: RunArgs) -> Result<()> {
    let mut exp = schema::load(&args.file)?;
    if let Some(b) = args.backend {
        exp.backend = b;
        exp.sweep.retain(|a| a.field != "backend");
    }
    if let Some(d) = args.dtype
        && d != exp.dtype
    {
        exp.name = Some(format!("{}-{d}", exp.name()));
        exp.dtype = d;
        exp.sweep.retain(|a| a.field != "dtype");
    }
    exp.validate()
        .with_context(|| format!("{} with the command-line overrides", args.file.display()))?;
    let runs = grid::expand(&exp)?;
    let exp_dir = args.results.join(exp.name());
    if args.dry_run {
        println!(
            "{}: {} run(s) on {} → {}",
            exp.name(),
            runs.len(),
            exp.backend,
            exp_dir.display()
        );
        for r in &runs {
            let state = match run_state(&exp_dir, r) {
                RunState::Pending => "pending".to_string(),
                RunState::Partial(n) => format!("partial ({n} stage(s) done)"),
                RunState::Finished => "finished".to_string(),
            };
            println!("  {:<40} {state}", r.name);
        }
        return Ok(());
    }
    let shard = match args.shard {
        Some(s) => Some(s),
        None if !args.summarize && args.only.is_none() => {
            Shard::from_slurm(|k| std::env::var(k).ok())?
        }
        None => None,
    };
    let selected: Vec<_> = match &args.only {
        Some(name) => {
            let r: Vec<_> = runs.iter().filter(|r| &r.name == name).cloned().collect();
            if r.is_empty() {
                bail!(
                    "--only {name}: no such run in {} (runs: {})",
                    args.file.display(),
                    runs.iter()
                        .map(|r| r.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            r
        }
        None if args.summarize => Vec::new(),
        None => match shard {
            Some(sh) => {
                let mine: Vec<_> = runs
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| sh.owns(*i))
                    .map(|(_, r)| r.clone())
                    .collect();
                eprintln!(
                    "shard {}/{}: {} of the {} runs ({})",
                    sh.index,
                    sh.count,
                    mine.len(),
                    runs.len(),
                    mine.iter()
                        .map(|r| r.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                mine
            }
            None => runs.clone(),
        },
    };
    execute(
        &exp,
        &runs,
        &selected,
        &exp_dir,
        args.cache_dir.clone(),
        args.fresh,
    )
}

/// Runs `selected` (a subset of the experiment's `runs`) that are not finished, then writes the
/// tables and plots over every finished run and checks the expectations.
pub fn execute(
    exp: &Experiment,
    runs: &[RunSpec],
    selected: &[RunSpec],
    exp_dir: &Path,
    cache_dir: Option<PathBuf>,
    fresh: bool,
) -> Result<()> {
    std::fs::create_dir_all(exp_dir)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", exp_dir.display()))?;
    // Runs are grouped by backend (a sweep may vary it); each group runs in one dispatch.
    let git_revision = record::git_revision();
    let mut backends: Vec<BackendKind> = Vec::new();
    for r in selected {
        if !backends.contains(&r.experiment.backend) {
            backends.push(r.experiment.backend);
        }
    }
    for backend in backends {
        let job = SweepJob {
            experiment: exp.clone(),
            runs: selected
                .iter()
                .filter(|r| r.experiment.backend == backend)
                .cloned()
                .collect(),
            exp_dir: exp_dir.to_path_buf(),
            cache_dir: cache_dir.clone(),
            git_revision: git_revision.clone(),
            fresh,
        };
        dispatch(backend, job)?;
    }

    // Tables and plots over every finished run of the experiment (not only this invocation's).
    let mut finished = Vec::new();
    for r in runs {
        let p = record::run_dir(exp_dir, &r.name).join("metrics.json");
        if p.is_file() {
            finished.push(record::read_json::<RunMetrics>(&p)?);
        }
    }
    let command = format!(
        "secvec-experiments {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    let files = report::write_all(exp_dir, exp, &finished, &command, runs.len())?;
    eprintln!(
        "wrote {}",
        files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let failures = check_expectations(exp, &finished);
    if !failures.is_empty() {
        bail!("expectations failed:\n  {}", failures.join("\n  "));
    }
    if exp.expect.is_some() {
        eprintln!("expectations met in {} run(s)", finished.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use record::StageRecord;
    use schema::Arm;
    use secvec_core::eval::stats::Rate;
    use stage::Stage;
    use std::collections::BTreeMap;

    #[test]
    fn shards_split_a_sweep_round_robin_and_bad_ones_are_named() {
        let sh: Shard = "1/3".parse().unwrap();
        let mine: Vec<usize> = (0..8).filter(|&i| sh.owns(i)).collect();
        assert_eq!(mine, [1, 4, 7]);
        // Every run is in exactly one shard.
        for i in 0..20 {
            let owners = (0..3)
                .filter(|&k| Shard::new(k, 3).unwrap().owns(i))
                .count();
            assert_eq!(owners, 1);
        }
        for (bad, why) in [
            ("3/3", "does not exist"),
            ("0/0", "does not exist"),
            ("1", "expected I/N"),
            ("a/2", "shard index `a`"),
        ] {
            let e = bad.parse::<Shard>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn a_slurm_array_task_is_a_shard_counted_from_the_arrays_first_id() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(Shard::from_slurm(env(&[])).unwrap(), None);
        let s = Shard::from_slurm(env(&[
            ("SLURM_ARRAY_TASK_ID", "2"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]))
        .unwrap();
        assert_eq!(s, Some(Shard::new(2, 4).unwrap()));
        // `--array=1-4`: ids 1..4 are shards 0..3.
        let s = Shard::from_slurm(env(&[
            ("SLURM_ARRAY_TASK_ID", "4"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
        ]))
        .unwrap();
        assert_eq!(s, Some(Shard::new(3, 4).unwrap()));
        let e = Shard::from_slurm(env(&[
            ("SLURM_ARRAY_TASK_ID", "x"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]))
        .unwrap_err();
        assert!(format!("{e:#}").contains("SLURM_ARRAY_TASK_ID=x"), "{e:#}");
    }

    fn run_with(off: usize, on: usize) -> RunMetrics {
        let stage = |arm: Arm, k: usize| StageRecord {
            stage: Stage::Attacked(arm),
            arm: Some(arm),
            metrics: BTreeMap::from([("harmful_rate".to_string(), Rate::new(k, 40))]),
            eval_seconds: 0.0,
            eval_cached: false,
            training: None,
            same_as: None,
        };
        let config = schema::parse_str("()", "t.ron").unwrap();
        RunMetrics {
            experiment: "t".into(),
            run: "main".into(),
            point: Vec::new(),
            config_hash: String::new(),
            config,
            model: String::new(),
            backend: String::new(),
            git_revision: String::new(),
            finished_unix: 0,
            wall_seconds: 0.0,
            data: BTreeMap::new(),
            training: Vec::new(),
            stages: vec![stage(Arm::Off, off), stage(Arm::Active, on)],
        }
    }

    #[test]
    fn expectations_fail_when_the_gap_closes() {
        let exp = schema::parse_str(
            "(expect: (min_gap: 0.3, min_harmful_without_vectors: 0.4))",
            "t.ron",
        )
        .unwrap();
        assert!(check_expectations(&exp, &[run_with(36, 2)]).is_empty());
        let f = check_expectations(&exp, &[run_with(36, 30)]);
        assert_eq!(f.len(), 1);
        assert!(f[0].contains("below expect.min_gap"), "{f:?}");
        // An attack that did not work makes the comparison meaningless: that fails too.
        let f = check_expectations(&exp, &[run_with(4, 0)]);
        assert!(f.iter().any(|m| m.contains("attack did not work")), "{f:?}");
        // No expect block: nothing is checked.
        let none = schema::parse_str("()", "t.ron").unwrap();
        assert!(check_expectations(&none, &[run_with(0, 40)]).is_empty());
    }

    /// A run with harmful 38/40 → 0/40 and the given over-refusal and benign accuracy counts
    /// (of 40) for the arms without and with vectors.
    fn run_with_utility(refused: (usize, usize), correct: (usize, usize)) -> RunMetrics {
        let mut run = run_with(38, 0);
        for (stage, (r, c)) in run
            .stages
            .iter_mut()
            .zip([(refused.0, correct.0), (refused.1, correct.1)])
        {
            stage
                .metrics
                .insert("over_refusal".into(), Rate::new(r, 40));
            stage
                .metrics
                .insert("benign_accuracy".into(), Rate::new(c, 40));
        }
        run
    }

    #[test]
    fn expectations_fail_when_the_vectors_cost_utility() {
        let exp = schema::parse_str(
            "(expect: (min_gap: 0.5, max_over_refusal_gap: 0.1, max_over_refusal_with_vectors: 0.15, \
             max_benign_accuracy_drop: 0.1), evaluate: (metrics: [HarmfulRate, OverRefusal, BenignAccuracy]))",
            "t.ron",
        )
        .unwrap();
        // Harm blocked, utility kept: 1 → 2 refused, 20 → 19 correct.
        assert!(check_expectations(&exp, &[run_with_utility((1, 2), (20, 19))]).is_empty());
        // Harm blocked by refusing benign prompts: 0 → 15 refused (gap and ceiling both fail).
        let f = check_expectations(&exp, &[run_with_utility((0, 15), (20, 19))]);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f[0].contains("above expect.max_over_refusal_gap"), "{f:?}");
        assert!(
            f[1].contains("above expect.max_over_refusal_with_vectors"),
            "{f:?}"
        );
        // Benign accuracy lost: 20 → 10 correct.
        let f = check_expectations(&exp, &[run_with_utility((1, 1), (20, 10))]);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].contains("above expect.max_benign_accuracy_drop"),
            "{f:?}"
        );
        // The skill in the same data must still be learned: 30 → 28 of 40 passes; 30 → 12
        // fails both the floor and the drop.
        let exp = schema::parse_str(
            "(expect: (min_skill_with_vectors: 0.5, max_skill_drop: 0.1), \
             evaluate: (metrics: [HarmfulRate, SkillAccuracy]))",
            "t.ron",
        )
        .unwrap();
        let with_skill = |without: usize, with: usize| {
            let mut run = run_with(38, 0);
            for (stage, c) in run.stages.iter_mut().zip([without, with]) {
                stage
                    .metrics
                    .insert("skill_accuracy".into(), Rate::new(c, 40));
            }
            run
        };
        assert!(check_expectations(&exp, &[with_skill(30, 28)]).is_empty());
        let f = check_expectations(&exp, &[with_skill(30, 12)]);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f[0].contains("above expect.max_skill_drop"), "{f:?}");
        assert!(
            f[1].contains("below expect.min_skill_with_vectors"),
            "{f:?}"
        );
        // A utility bound without its metric is refused when the file is checked.
        let err = schema::parse_str(
            "(expect: (max_benign_accuracy_drop: 0.1), evaluate: (metrics: [HarmfulRate]))",
            "t.ron",
        )
        .unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.contains("expect.max_benign_accuracy_drop: needs BenignAccuracy"),
            "{err}"
        );
    }
}
