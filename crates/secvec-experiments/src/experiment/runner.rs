//! Runs the points of a sweep, resumably: each run's stages in order (align → security vectors
//! → the attack arms → evaluation), each evaluated model written as soon as it is done (the
//! layout: [`super::record`]); the aligned model and the vectors come from the stage cache
//! ([`super::cache`]) when another run made them.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;

use secvec_core::adapter::peft::write_f32_safetensors;
use secvec_core::adapter::{ALIGN, SECURITY, TASK, merge_adapter, set_base_trainable};
use secvec_core::data::Sample;
use secvec_core::defence::{finetune_lisa, train_alignment_vaccine};
use secvec_core::eval::judge::KeywordJudge;
use secvec_core::eval::metrics::EvalConfig;
use secvec_core::steering::{attach_steering, steering_directions};
use secvec_core::train::{
    Checkpointing, FinetuneConfig, FinetuneMode, NoCallback, StepLog, TrainExample, TrainReport,
    encode_pairs, finetune, train_alignment, train_security_vectors,
};
use secvec_models::{Llama, ModelSource, TextTokenizer};

use super::cache::{CACHE_VERSION, cache_key, cached_adapter, checkpoint_every};
use super::convert;
use super::data::{RunData, build_data, pairs, samples_digest};
use super::evaluator::Evaluator;
use super::grid::RunSpec;
use super::record::{
    RunMetrics, StageRecord, TrainSummary, config_hash, read_json, run_dir, same_config, write_json,
};
use super::schema::{Arm, Behaviour, Checkpoint, Experiment, VectorKind};
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
    /// Train every stage even when the stage cache has it (the cache is still refreshed).
    pub fresh: bool,
}

/// What a run still has to compute, decided once from the stage files an earlier attempt left.
struct Plan {
    /// The evaluated models the run reports, in pipeline order.
    wanted: Vec<Stage>,
    /// Records read back from an earlier attempt.
    done: HashMap<Stage, StageRecord>,
    /// Security vectors from 0 samples: the `active` arm is the plain attack, so it is not
    /// trained but reported as the same model as the `off` arm.
    no_vectors: bool,
}

impl Plan {
    fn new(exp: &Experiment, stages_dir: &Path) -> Result<Self> {
        let ev = &exp.evaluate;
        let no_vectors = exp.security_vectors.samples == 0;
        let mut wanted = Vec::new();
        if ev.checkpoints.contains(&Checkpoint::Shipped) {
            wanted.push(Stage::Shipped);
        }
        if ev.checkpoints.contains(&Checkpoint::Aligned) {
            wanted.push(Stage::Aligned);
        }
        if !no_vectors && ev.checkpoints.contains(&Checkpoint::VectorsOn) {
            wanted.push(Stage::VectorsOn);
        }
        wanted.extend(exp.finetune.arms.iter().map(|&a| Stage::Attacked(a)));
        if ev.attacked_vectors_on && !no_vectors {
            wanted.extend(
                exp.finetune
                    .arms
                    .iter()
                    .map(|&a| Stage::AttackedVectorsOn(a)),
            );
        }
        let mut done = HashMap::new();
        for stage in &wanted {
            let p = stage_path(stages_dir, *stage);
            if p.is_file() {
                done.insert(*stage, read_json::<StageRecord>(&p)?);
            }
        }
        Ok(Self {
            wanted,
            done,
            no_vectors,
        })
    }

    /// Whether `stage` still has to be evaluated.
    fn todo(&self, stage: Stage) -> bool {
        self.wanted.contains(&stage) && !self.done.contains_key(&stage)
    }

    /// Whether the aligned model has to be built (everything but the shipped model needs it).
    fn needs_model(&self) -> bool {
        self.wanted
            .iter()
            .any(|&s| s != Stage::Shipped && self.todo(s))
    }

    /// Whether the attack of `arm` has to be trained: one of its models is still to evaluate,
    /// and it is not the `active` arm of a run without vectors.
    fn trains(&self, arm: Arm) -> bool {
        !(self.no_vectors && arm == Arm::Active)
            && (self.todo(Stage::Attacked(arm)) || self.todo(Stage::AttackedVectorsOn(arm)))
    }
}

fn stage_path(stages_dir: &Path, stage: Stage) -> PathBuf {
    stages_dir.join(format!("{stage}.json"))
}

/// Everything one run's stages share.
struct RunContext<'a, B: AutodiffBackend> {
    exp: &'a Experiment,
    data: &'a RunData,
    evaluator: Evaluator<'a>,
    /// `<cache>/experiments`.
    cache: PathBuf,
    model_name: String,
    fresh: bool,
    /// Training summaries of the cached stages (align, vectors), in order.
    training: Vec<TrainSummary>,
    _backend: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> RunContext<'_, B> {
    fn tok(&self) -> &TextTokenizer {
        self.evaluator.tok
    }

    /// The run's folder (the evaluator writes its generations there too).
    fn run_dir(&self) -> &Path {
        &self.evaluator.dir
    }

    fn encode(&self, samples: &[Sample]) -> Result<Vec<TrainExample>> {
        Ok(encode_pairs(
            self.tok(),
            &pairs(samples),
            self.exp.system_prompt.as_deref(),
            self.exp.max_len,
        )?)
    }

    /// Evaluates `model` as `stage` and writes its record at once.
    fn evaluate(
        &self,
        stage: Stage,
        model: &Llama<B::InnerBackend>,
        training: Option<TrainSummary>,
    ) -> Result<StageRecord> {
        let (metrics, secs) = self
            .evaluator
            .run(stage, model)
            .with_context(|| format!("stage `{stage}`: evaluation"))?;
        let rec = StageRecord {
            stage,
            arm: stage.arm(),
            metrics,
            eval_seconds: secs,
            training,
            same_as: None,
        };
        write_json(&stage_path(&self.run_dir().join("stages"), stage), &rec)?;
        // Fault injection for the resume tests: die like a killed process right after a stage.
        if std::env::var("SECVEC_FAULT_AFTER_STAGE").is_ok_and(|s| s == stage.name()) {
            eprintln!("SECVEC_FAULT_AFTER_STAGE: aborting after stage {stage}");
            std::process::abort();
        }
        Ok(rec)
    }

    /// The cache key of a stage: what determines it, and the backend and precision.
    fn key(&self, stage: serde_json::Value, extra: serde_json::Value) -> serde_json::Value {
        let exp = self.exp;
        let mut key = serde_json::json!({
            "version": CACHE_VERSION,
            "model": self.model_name,
            "stage": stage,
            "seed": exp.seed,
            "max_len": exp.max_len,
            "system_prompt": exp.system_prompt,
        });
        if let (Some(k), Some(e)) = (key.as_object_mut(), extra.as_object()) {
            k.extend(e.clone());
        }
        cache_key(exp, key)
    }

    /// Stage 0: the shipped model aligned (a LoRA trained and merged; cached). Returns the model
    /// and the cache hash of the alignment (`none` without it), which keys the vectors.
    fn align(&mut self, mut model: Llama<B>) -> Result<(Llama<B>, String)> {
        set_base_trainable(&mut model, false);
        let Some(a) = &self.exp.align else {
            return Ok((model, "none".into()));
        };
        let cfg = convert::align(self.exp, a);
        let mut align_data = self.data.align_refusals.clone();
        align_data.extend(self.data.align_benign.iter().cloned());
        let key = self.key(
            serde_json::json!(a),
            serde_json::json!({ "data": samples_digest(&align_data) }),
        );
        let examples = self.encode(&align_data)?;
        let pad = self.tok().pad_id();
        let (mut m, summary, hash) = cached_adapter(
            &self.cache,
            "align",
            ALIGN,
            &key,
            model,
            &self.model_name,
            &cfg.adapter,
            |m, ck| {
                let mut cfg = cfg.clone();
                cfg.train.checkpoint = Some(ck);
                match &a.vaccine {
                    None => {
                        eprintln!("  [align] training on {} samples", align_data.len());
                        train_alignment(m, &examples, pad, &cfg, &mut NoCallback)
                    }
                    Some(v) => {
                        eprintln!(
                            "  [align] training on {} samples under Vaccine's perturbation (rho {})",
                            align_data.len(),
                            v.rho
                        );
                        train_alignment_vaccine(m, &examples, pad, &cfg, v, &mut NoCallback)
                    }
                }
                .context("stage `align`")
            },
            align_data.len(),
            self.fresh,
        )?;
        merge_adapter(&mut m, ALIGN)?;
        self.training.push(summary);
        Ok((m, hash))
    }

    /// Phase 1: the security vectors on the aligned model (cached); returned attached, frozen
    /// and switched off.
    fn vectors(&mut self, model: Llama<B>, align_hash: &str) -> Result<Llama<B>> {
        let s = &self.exp.security_vectors;
        if let VectorKind::Steering {
            layers,
            coefficient,
        } = &s.kind
        {
            return self.steering_vectors(model, layers, *coefficient);
        }
        let sv_cfg = convert::security_vectors(self.exp, s);
        let key = self.key(
            serde_json::json!(s),
            serde_json::json!({ "align": align_hash, "data": samples_digest(&self.data.sv) }),
        );
        let examples = self.encode(&self.data.sv)?;
        let pad = self.tok().pad_id();
        let n = self.data.sv.len();
        let (model, summary, _) = cached_adapter(
            &self.cache,
            "vectors",
            SECURITY,
            &key,
            model,
            &self.model_name,
            &sv_cfg.adapter,
            |m, ck| {
                eprintln!("  [security vectors] training on {n} samples");
                let mut sv_cfg = sv_cfg.clone();
                sv_cfg.train.checkpoint = Some(ck);
                train_security_vectors(m, &examples, pad, &sv_cfg, &mut NoCallback)
                    .context("stage `vectors`")
            },
            n,
            self.fresh,
        )?;
        self.training.push(summary);
        Ok(model)
    }

    /// Phase 1 with activation-steering vectors: the directions computed from the compliant
    /// answers and the refusals of the vectors' prompts (no training, no cache: a forward pass
    /// over the samples), written to the run's folder, and attached switched off.
    fn steering_vectors(
        &mut self,
        mut model: Llama<B>,
        layers: &[usize],
        coefficient: f64,
    ) -> Result<Llama<B>> {
        let t = std::time::Instant::now();
        let compliant = self.encode(&self.data.sv)?;
        let refusing = self.encode(&self.data.sv_refusals)?;
        let pad = self.tok().pad_id();
        let batch = self.exp.security_vectors.batch_size;
        let dirs = steering_directions(&model.valid(), &compliant, &refusing, pad, layers, batch)
            .context("stage `vectors` (steering)")?;
        let norms: Vec<String> = dirs
            .iter()
            .map(|(l, v)| {
                let n = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
                format!("layer {l} |v| {n:.2}")
            })
            .collect();
        eprintln!(
            "  [security vectors] steering directions from {} compliant answers and {} refusals \
             ({}; coefficient {coefficient}; {:.0}s)",
            compliant.len(),
            refusing.len(),
            norms.join(", "),
            t.elapsed().as_secs_f64()
        );
        let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = dirs
            .iter()
            .map(|(l, v)| (format!("layers.{l}"), vec![v.len()], v.clone()))
            .collect();
        write_f32_safetensors(
            &self.run_dir().join("steering-vectors.safetensors"),
            &tensors,
        )?;
        attach_steering(&mut model, SECURITY, &dirs, coefficient)?;
        secvec_core::train::set_security_vectors(&mut model, false)?;
        Ok(model)
    }

    /// Phase 2 for one arm, then phase 3: the attacked model evaluated with the vectors off
    /// (and on, when asked). Returns the records it made.
    ///
    /// The task LoRA of the `off` arm does not depend on the vectors (they are off, or absent), so
    /// it is kept in the stage cache (`attack-off/<hash>/`): runs that differ only in the vectors'
    /// settings — the ablations of their samples, learning rate and epochs — train it once.
    /// Phase 2's training as the experiment asks: plain, or under Lisa (`finetune.lisa`)
    /// alternating with the alignment stage's data.
    fn tune(
        &self,
        model: Llama<B>,
        examples: &[TrainExample],
        cfg: &FinetuneConfig,
    ) -> Result<(Llama<B>, TrainReport)> {
        let pad = self.tok().pad_id();
        let Some(lisa) = &self.exp.finetune.lisa else {
            return Ok(finetune(model, examples, pad, cfg, &mut NoCallback)?);
        };
        let mut align_data = self.data.align_refusals.clone();
        align_data.extend(self.data.align_benign.iter().cloned());
        let guide = self.encode(&align_data)?;
        eprintln!(
            "  Lisa: {} + {} steps per cycle, alternating with {} alignment samples, rho {}",
            lisa.align_steps,
            lisa.finetune_steps,
            guide.len(),
            lisa.rho
        );
        Ok(finetune_lisa(
            model,
            examples,
            &guide,
            pad,
            cfg,
            lisa,
            &mut NoCallback,
        )?)
    }

    fn attack(
        &self,
        plan: &Plan,
        arm: Arm,
        model: &Llama<B>,
        examples: &[TrainExample],
        align_hash: &str,
    ) -> Result<Vec<StageRecord>> {
        let stage = Stage::Attacked(arm);
        let n = self.data.attack.len();
        let announce = || {
            eprintln!(
                "  [{stage}] fine-tuning on {n} samples ({} {}), vectors {}",
                self.data.counts["finetune_harmful"],
                match self.exp.behaviour {
                    Behaviour::Harmful => "harmful",
                    Behaviour::Hallucination => "wrong-answer",
                },
                if arm == Arm::Active { "active" } else { "off" }
            )
        };
        let cfg = convert::finetune(self.exp, arm);
        let (tuned, summary, steps) = match (&cfg.mode, arm) {
            (FinetuneMode::Lora(adapter), Arm::Off) => {
                let mut stage_key = serde_json::json!(self.exp.finetune);
                if let Some(o) = stage_key.as_object_mut() {
                    // Which arms a run trains does not change this arm's training.
                    o.remove("arms");
                }
                let key = self.key(
                    stage_key,
                    serde_json::json!({
                        "align": align_hash,
                        "data": samples_digest(&self.data.attack),
                    }),
                );
                let (tuned, mut summary, hash) = cached_adapter(
                    &self.cache,
                    "attack-off",
                    TASK,
                    &key,
                    model.clone(),
                    &self.model_name,
                    adapter,
                    |m, ck| {
                        announce();
                        let mut cfg = cfg.clone();
                        cfg.train.checkpoint = Some(ck);
                        self.tune(m, examples, &cfg)
                            .with_context(|| format!("stage `{stage}`"))
                    },
                    n,
                    self.fresh,
                )?;
                summary.stage = stage.name();
                let steps_path = self.cache.join("attack-off").join(hash).join("steps.json");
                let steps: Vec<StepLog> = read_json(&steps_path)?;
                (tuned, summary, steps)
            }
            _ => {
                announce();
                // A killed training resumes from its last checkpoint, in the run's folder.
                let mut cfg = cfg.clone();
                cfg.train.checkpoint = Some(Checkpointing {
                    dir: self.run_dir().join(format!("partial-{stage}")),
                    every: checkpoint_every(),
                });
                let (tuned, report) = self
                    .tune(model.clone(), examples, &cfg)
                    .with_context(|| format!("stage `{stage}`"))?;
                let summary = TrainSummary::new(&stage.name(), n, &report);
                (tuned, summary, report.steps)
            }
        };
        write_json(&self.run_dir().join(format!("train-{stage}.json")), &steps)?;
        let mut inner = tuned.valid();
        let mut records = Vec::new();
        if plan.todo(stage) {
            records.push(self.evaluate(stage, &inner, Some(summary))?);
        }
        let von = Stage::AttackedVectorsOn(arm);
        if plan.todo(von) {
            secvec_core::train::set_security_vectors(&mut inner, true)?;
            records.push(self.evaluate(von, &inner, None)?);
        }
        Ok(records)
    }
}

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
            records.push(cx.evaluate(Stage::Shipped, &loaded.model.valid(), None)?);
        }
        if plan.needs_model() {
            let (mut model, align_hash) = cx.align(loaded.model.clone())?;
            if plan.todo(Stage::Aligned) {
                records.push(cx.evaluate(Stage::Aligned, &model.valid(), None)?);
            }
            if !plan.no_vectors {
                model = cx.vectors(model, &align_hash)?;
                if plan.todo(Stage::VectorsOn) {
                    let mut on = model.valid();
                    secvec_core::train::set_security_vectors(&mut on, true)?;
                    records.push(cx.evaluate(Stage::VectorsOn, &on, None)?);
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
