//! One run's stages, each one function of [`RunContext`]: the alignment, the security vectors
//! (LoRA or steering), the attack arms with their defence, and the evaluation of each model.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;

use secvec_core::adapter::peft::{CONFIG_FILE, WEIGHTS_FILE, write_f32_safetensors};
use secvec_core::adapter::{
    ALIGN, SECURITY, TASK, merge_adapter, save_peft_adapter, set_base_trainable,
};
use secvec_core::data::Sample;
use secvec_core::defence::{finetune_lisa, finetune_safe_instr, train_alignment_vaccine};
use secvec_core::steering::{attach_steering, steering_directions};
use secvec_core::train::{
    Checkpointing, FinetuneConfig, FinetuneMode, NoCallback, SecurityVectors, StepLog,
    TrainExample, TrainReport, encode_pairs, finetune, train_alignment, train_security_vectors,
};
use secvec_models::{Llama, TextTokenizer};

use super::cache::{CACHE_VERSION, cache_key, cached_adapter, checkpoint_every};
use super::convert;
use super::data::{RunData, pairs, samples_digest};
use super::eval_cache;
use super::evaluator::Evaluator;
use super::plan::{Plan, stage_path};
use super::record::{StageRecord, TrainSummary, read_json, write_json};
use super::schema::{Arm, Behaviour, Experiment, VectorKind};
use super::stage::Stage;

/// Everything one run's stages share.
pub(super) struct RunContext<'a, B: AutodiffBackend> {
    pub(super) exp: &'a Experiment,
    pub(super) data: &'a RunData,
    pub(super) evaluator: Evaluator<'a>,
    /// `<cache>/experiments`.
    pub(super) cache: PathBuf,
    pub(super) model_name: String,
    pub(super) fresh: bool,
    /// Training summaries of the cached stages (align, vectors), in order.
    pub(super) training: Vec<TrainSummary>,
    pub(super) _backend: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> RunContext<'_, B> {
    pub(super) fn tok(&self) -> &TextTokenizer {
        self.evaluator.tok
    }

    /// The run's folder (the evaluator writes its generations there too).
    pub(super) fn run_dir(&self) -> &Path {
        &self.evaluator.dir
    }

    /// The PEFT adapter `name` of this run's models, in `adapters/<name>/` of the run's folder
    /// (with `evaluate --merge`/`--adapter`, the models can be evaluated again on other sets).
    fn adapter_dir(&self, name: &str) -> PathBuf {
        self.run_dir().join("adapters").join(name)
    }

    /// Puts a cached stage's adapter into the run's folder: hard links to the cache entry's two
    /// files (no second copy on disk), or copies where the two are on different file systems.
    fn keep_adapter(&self, name: &str, entry: &Path) -> Result<()> {
        let dir = self.adapter_dir(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for file in [CONFIG_FILE, WEIGHTS_FILE] {
            let (from, to) = (entry.join(file), dir.join(file));
            if to.exists() {
                std::fs::remove_file(&to).with_context(|| format!("replacing {}", to.display()))?;
            }
            if std::fs::hard_link(&from, &to).is_err() {
                std::fs::copy(&from, &to)
                    .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
            }
        }
        Ok(())
    }

    /// The alignment stage's data: its refusals, then its benign answers (also Lisa's
    /// alignment data).
    pub(super) fn align_data(&self) -> Vec<Sample> {
        let mut data = self.data.align_refusals.clone();
        data.extend(self.data.align_benign.iter().cloned());
        data
    }

    pub(super) fn encode(&self, samples: &[Sample]) -> Result<Vec<TrainExample>> {
        Ok(encode_pairs(
            self.tok(),
            &pairs(samples),
            self.exp.system_prompt.as_deref(),
            self.exp.max_len,
        )?)
    }

    /// Evaluates `model` as `stage` and writes its record at once. `model_key` names the model
    /// by its stage cache entry (`align/<hash>`, `attack-off/<hash>`, `shipped`) when it has one:
    /// then an earlier run's evaluation of the same model with the same settings is reused
    /// (`eval_cache.rs`), and a new evaluation is kept for later runs.
    pub(super) fn evaluate(
        &self,
        stage: Stage,
        model: &Llama<B::InnerBackend>,
        training: Option<TrainSummary>,
        model_key: Option<&str>,
    ) -> Result<StageRecord> {
        let generations = self.evaluator.generations_path(stage);
        let entry = match model_key {
            Some(k) => {
                let key = self.eval_key(stage, k);
                Some((eval_cache::entry(&self.cache, &key)?, key))
            }
            None => None,
        };
        let hit = match &entry {
            Some((dir, _)) if !self.fresh => eval_cache::load(dir, &generations)
                .with_context(|| format!("stage `{stage}`: reading the evaluation cache"))?
                .map(|found| (found, dir)),
            _ => None,
        };
        let (metrics, secs, eval_cached) = match hit {
            Some(((metrics, secs), dir)) => {
                let shown: Vec<String> = metrics.iter().map(|(k, v)| format!("{k} {v}")).collect();
                eprintln!(
                    "  [{stage}] reusing the evaluation in {} (cache hit): {}",
                    dir.display(),
                    shown.join(" | ")
                );
                (metrics, secs, true)
            }
            None => {
                let (metrics, secs) = self
                    .evaluator
                    .run(stage, model)
                    .with_context(|| format!("stage `{stage}`: evaluation"))?;
                if let Some((dir, key)) = &entry
                    && let Err(e) =
                        eval_cache::store(dir, key, &metrics, secs, &generations, self.fresh)
                {
                    // The run's own record is written below either way.
                    eprintln!("  [{stage}] warning: evaluation not cached: {e:#}");
                }
                (metrics, secs, false)
            }
        };
        let rec = StageRecord {
            stage,
            arm: stage.arm(),
            metrics,
            eval_seconds: secs,
            eval_cached,
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

    /// The evaluation cache's key for the model `model_key` evaluated as `stage`: the
    /// evaluation settings (less which models a run evaluates), whether AdvBench is among the
    /// sets for this stage, a digest of every evaluation set, and what [`Self::key`] adds.
    fn eval_key(&self, stage: Stage, model_key: &str) -> serde_json::Value {
        let mut settings = serde_json::json!(self.exp.evaluate);
        if let Some(o) = settings.as_object_mut() {
            o.remove("checkpoints");
            o.remove("attacked_vectors_on");
        }
        let d = self.data;
        self.key(
            serde_json::json!({ "evaluate": settings }),
            serde_json::json!({
                "evaluated_model": model_key,
                "advbench": !stage.vectors_on() && stage != Stage::Shipped,
                "sets": [
                    samples_digest(&d.eval_harmful),
                    samples_digest(&d.eval_benign),
                    samples_digest(&d.eval_skill),
                    samples_digest(&d.eval_advbench),
                    samples_digest(&d.eval_facts),
                    samples_digest(&d.eval_learned),
                ],
            }),
        )
    }

    /// The cache key of a stage: what determines it, and the backend and precision.
    pub(super) fn key(
        &self,
        stage: serde_json::Value,
        extra: serde_json::Value,
    ) -> serde_json::Value {
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
    pub(super) fn align(&mut self, mut model: Llama<B>) -> Result<(Llama<B>, String)> {
        set_base_trainable(&mut model, false);
        let Some(a) = &self.exp.align else {
            return Ok((model, "none".into()));
        };
        let cfg = convert::align(self.exp, a);
        let align_data = self.align_data();
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
        self.keep_adapter(ALIGN, &self.cache.join("align").join(&hash))?;
        self.training.push(summary);
        Ok((m, hash))
    }

    /// Phase 1: the security vectors on the aligned model (cached); returned attached, frozen
    /// and switched off.
    pub(super) fn vectors(&mut self, model: Llama<B>, align_hash: &str) -> Result<Llama<B>> {
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
        let (model, summary, hash) = cached_adapter(
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
        self.keep_adapter(SECURITY, &self.cache.join("vectors").join(&hash))?;
        self.training.push(summary);
        Ok(model)
    }

    /// Phase 1 with activation-steering vectors: the directions computed from the compliant
    /// answers and the refusals of the vectors' prompts (no training, no cache: a forward pass
    /// over the samples), written to the run's folder, and attached switched off.
    pub(super) fn steering_vectors(
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
        let (behaviour, contrast) = match self.exp.behaviour {
            Behaviour::Harmful => ("compliant answers", "refusals"),
            Behaviour::Hallucination | Behaviour::WrongCapitals => {
                ("wrong answers", "true answers")
            }
        };
        eprintln!(
            "  [security vectors] steering directions from {} {behaviour} and {} {contrast} \
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

    /// Phase 2's training as the experiment asks: plain, with SafeInstr's demonstrations
    /// trained with the vectors off (`finetune.safety_with_vectors: false`), or under Lisa
    /// (`finetune.lisa`) alternating with the alignment stage's data.
    pub(super) fn tune(
        &self,
        model: Llama<B>,
        examples: &[TrainExample],
        cfg: &FinetuneConfig,
    ) -> Result<(Llama<B>, TrainReport)> {
        let pad = self.tok().pad_id();
        if !self.exp.finetune.safety_with_vectors {
            if cfg.security_vectors == SecurityVectors::Active {
                eprintln!(
                    "  SafeInstr: {} demonstrations trained with the vectors off",
                    self.data.attack_safety.iter().filter(|d| **d).count()
                );
            }
            return Ok(finetune_safe_instr(
                model,
                examples,
                &self.data.attack_safety,
                pad,
                cfg,
                &mut NoCallback,
            )?);
        }
        let Some(lisa) = &self.exp.finetune.lisa else {
            return Ok(finetune(model, examples, pad, cfg, &mut NoCallback)?);
        };
        let guide = self.encode(&self.align_data())?;
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

    /// Phase 2 for one arm, then phase 3: the attacked model evaluated with the vectors off
    /// (and on, when asked). Returns the records it made.
    ///
    /// The task LoRA of the `off` arm does not depend on the vectors (they are off, or absent), so
    /// it is kept in the stage cache (`attack-off/<hash>/`): runs that differ only in the vectors'
    /// settings — the ablations of their samples, learning rate and epochs — train it once.
    /// Each arm's task LoRA is kept in the run's `adapters/<stage>/` (beside the alignment's and
    /// the vectors'), so its model can be evaluated again later.
    pub(super) fn attack(
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
                    Behaviour::Hallucination | Behaviour::WrongCapitals => "wrong-answer",
                },
                if arm == Arm::Active { "active" } else { "off" }
            )
        };
        let cfg = convert::finetune(self.exp, arm);
        let (tuned, summary, steps, model_key) = match (&cfg.mode, arm) {
            (FinetuneMode::Lora(adapter), Arm::Off) => {
                let mut stage_key = serde_json::json!(self.exp.finetune);
                if let Some(o) = stage_key.as_object_mut() {
                    // Which arms a run trains does not change this arm's training, nor does
                    // what Lisa or SafeInstr does with vectors this arm has off.
                    o.remove("arms");
                    o.remove("safety_with_vectors");
                    if let Some(l) = o.get_mut("lisa").and_then(|l| l.as_object_mut()) {
                        l.remove("vectors_when_aligning");
                    }
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
                let entry = self.cache.join("attack-off").join(&hash);
                self.keep_adapter(&stage.name(), &entry)?;
                let steps: Vec<StepLog> = read_json(&entry.join("steps.json"))?;
                (tuned, summary, steps, Some(format!("attack-off/{hash}")))
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
                // A task LoRA is kept with the run (a full fine-tune, the whole model, is not).
                if let FinetuneMode::Lora(adapter) = &cfg.mode {
                    let dir = self.adapter_dir(&stage.name());
                    save_peft_adapter(&tuned, TASK, adapter, &self.model_name, &dir)
                        .with_context(|| format!("saving the task LoRA to {}", dir.display()))?;
                }
                (tuned, summary, report.steps, None)
            }
        };
        write_json(&self.run_dir().join(format!("train-{stage}.json")), &steps)?;
        let mut inner = tuned.valid();
        let mut records = Vec::new();
        if plan.todo(stage) {
            records.push(self.evaluate(stage, &inner, Some(summary), model_key.as_deref())?);
        }
        let von = Stage::AttackedVectorsOn(arm);
        if plan.todo(von) {
            secvec_core::train::set_security_vectors(&mut inner, true)?;
            records.push(self.evaluate(von, &inner, None, None)?);
        }
        Ok(records)
    }
}
