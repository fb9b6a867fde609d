//! Runs the points of a sweep, resumably: each run's stages in order (align → security vectors
//! → the attack arms → evaluation), each evaluated model written as soon as it is done (the
//! layout: [`super::record`]); the aligned model and the vectors come from the stage cache
//! ([`super::cache`]) when another run made them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;

use secvec_core::eval::judge::KeywordJudge;
use secvec_core::eval::metrics::EvalConfig;
use secvec_models::ModelSource;

use super::data::build_data;
use super::evaluator::Evaluator;
use super::grid::RunSpec;
use super::record::{
    RunMetrics, StageRecord, config_hash, read_json, run_dir, same_config, write_json,
};
use super::schema::{Arm, Experiment};
use super::stage::Stage;
use crate::backend::{BackendKind, Job};

/// Runs the sweep's runs that are not finished yet.
pub struct SweepJob {
    pub experiment: Experiment,
    pub runs: Vec<RunSpec>,
    pub exp_dir: PathBuf,
    pub cache_dir: Option<PathBuf>,
    /// The revision of the code, taken when the sweep starts.
    pub git_revision: String,
    /// Train and evaluate every stage even when the stage or evaluation cache has it (the caches
    /// are still refreshed).
    pub fresh: bool,
}

use super::context::RunContext;
use super::plan::{Plan, stage_path};

impl SweepJob {
    /// Checks a run folder left by an earlier attempt against `exp`, then (re)writes `run.json`.
    fn claim_run_dir(&self, spec: &RunSpec, dir: &Path, hash: &str) -> Result<()> {
        let exp = &spec.experiment;
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
        let stages_dir = dir.join("stages");
        std::fs::create_dir_all(&stages_dir)
            .with_context(|| format!("creating {}", stages_dir.display()))?;
        write_json(
            &spec_path,
            &serde_json::json!({ "run": spec.name, "config_hash": hash, "config": exp }),
        )
    }

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
        self.claim_run_dir(spec, &dir, &hash)?;

        let data = build_data(exp)?;
        let source = ModelSource::parse(&exp.model)?;
        let t0 = Instant::now();
        let loaded = crate::model_args::load_model_as::<B>(
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
        let ev = &exp.evaluate;
        let mut cx = RunContext::<B> {
            exp,
            data: &data,
            evaluator: Evaluator {
                tok: &loaded.tokenizer,
                judge: match ev.judge.as_str() {
                    "gcg" => KeywordJudge::gcg(),
                    _ => KeywordJudge::secvec(),
                },
                config: EvalConfig {
                    max_new_tokens: ev.max_new_tokens,
                    batch_size: ev.batch_size,
                    system_prompt: exp.system_prompt.clone(),
                    progress: true,
                },
                metrics: ev.metrics.clone(),
                data: &data,
                dir: dir.clone(),
            },
            cache: secvec_models::registry::cache_dir(self.cache_dir.as_deref())
                .join("experiments"),
            model_name: source.display_name(),
            fresh: self.fresh,
            training: Vec::new(),
            _backend: std::marker::PhantomData,
        };

        let plan = Plan::new(exp, &stages_dir)?;
        let mut records: Vec<StageRecord> = plan.done.values().cloned().collect();
        if plan.todo(Stage::Shipped) {
            records.push(cx.evaluate(
                Stage::Shipped,
                &loaded.model.valid(),
                None,
                Some("shipped"),
            )?);
        }
        if plan.needs_model() {
            let (mut model, align_hash) = cx.align(loaded.model.clone())?;
            if plan.todo(Stage::Aligned) {
                records.push(cx.evaluate(
                    Stage::Aligned,
                    &model.valid(),
                    None,
                    Some(&format!("align/{align_hash}")),
                )?);
            }
            if !plan.no_vectors {
                model = cx.vectors(model, &align_hash)?;
                if plan.todo(Stage::VectorsOn) {
                    let mut on = model.valid();
                    secvec_core::train::set_security_vectors(&mut on, true)?;
                    records.push(cx.evaluate(Stage::VectorsOn, &on, None, None)?);
                }
                secvec_core::train::set_security_vectors(&mut model, false)?;
            }
            let examples = cx.encode(&data.attack)?;
            for &arm in &exp.finetune.arms {
                if plan.trains(arm) {
                    records.extend(cx.attack(&plan, arm, &model, &examples, &align_hash)?);
                }
            }
        }
        // Without vectors the `active` arm is the `off` arm's model: one record pointing at it
        // (its stage file holds no metrics; they are copied in below).
        if plan.no_vectors && plan.todo(Stage::Attacked(Arm::Active)) {
            let rec = StageRecord {
                stage: Stage::Attacked(Arm::Active),
                arm: Some(Arm::Active),
                metrics: BTreeMap::new(),
                eval_seconds: 0.0,
                eval_cached: false,
                training: None,
                same_as: Some(Stage::Attacked(Arm::Off)),
            };
            write_json(&stage_path(&stages_dir, rec.stage), &rec)?;
            records.push(rec);
        }
        // Every record pointing at the `off` arm gets its metrics for the tables.
        if let Some(off) = records
            .iter()
            .find(|r| r.stage == Stage::Attacked(Arm::Off))
            .map(|r| r.metrics.clone())
        {
            for r in records.iter_mut().filter(|r| r.same_as.is_some()) {
                r.metrics = off.clone();
            }
        }
        records.sort_by_key(|r| r.stage.sort_key());
        // The cached stages' training, then each attack arm's, which travels with its record.
        let mut training = std::mem::take(&mut cx.training);
        training.extend(records.iter().filter_map(|r| r.training.clone()));
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
