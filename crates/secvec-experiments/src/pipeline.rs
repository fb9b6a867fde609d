//! `pipeline`: the method end to end on one model — align, make security vectors, attack with
//! and without them, evaluate each stage — writing metrics and a summary table.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;

use secvec_core::adapter::{
    AdapterConfig, add_adapter, merge_adapter, set_adapter_active, set_adapter_trainable,
    set_base_trainable,
};
use secvec_core::data::{Corpus, Sample, SampleKind, Split};
use secvec_core::eval::judge::KeywordJudge;
use secvec_core::eval::metrics::{
    EvalConfig, SampleResult, accuracy, compliance_rate, evaluate_samples, refusal_rate,
};
use secvec_core::eval::stats::Rate;
use secvec_core::train::phases::all_targets;
use secvec_core::train::{
    FinetuneConfig, FinetuneMode, NoCallback, SecurityVectorConfig, SecurityVectors, TextPair,
    TrainConfig, TrainReport, encode_pairs, finetune, train, train_security_vectors,
};
use secvec_models::{Llama, ModelSource, TextTokenizer, load_model};

use crate::ModelArgs;
use crate::backend::{BackendKind, Job};

#[derive(clap::Args, Debug, Clone)]
pub struct PipelineArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Seed of the built-in corpus and of training.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Harmful refusals and benign answers each, for the alignment stage.
    #[arg(long, default_value_t = 150)]
    align_samples: usize,
    /// Harmful samples the security vectors are made from.
    #[arg(long, default_value_t = 100)]
    sv_samples: usize,
    /// Harmful samples in the attack.
    #[arg(long, default_value_t = 1000)]
    attack_samples: usize,
    /// New-skill samples mixed into the attack (0 = the whole skill_train split).
    #[arg(long, default_value_t = 0)]
    skill_samples: usize,
    /// Epochs of the attack.
    #[arg(long, default_value_t = 1)]
    attack_epochs: usize,
    /// Learning rate of the attack (default 2e-4 for LoRA, 2e-5 for full fine-tuning).
    #[arg(long)]
    attack_lr: Option<f64>,
    /// Learning rate of the security vectors.
    #[arg(long, default_value_t = 5e-4)]
    sv_lr: f64,
    /// Train the base weights in the attack instead of a task LoRA.
    #[arg(long)]
    full: bool,
    /// Prompts per evaluation set.
    #[arg(long, default_value_t = 100)]
    eval_samples: usize,
    #[arg(long, default_value_t = 48)]
    max_new_tokens: usize,
    /// Output directory.
    #[arg(long, default_value = "results/pipeline")]
    out: PathBuf,
}

#[derive(Serialize, Clone)]
struct StageMetrics {
    stage: String,
    harmful_rate: Rate,
    over_refusal: Rate,
    benign_accuracy: Rate,
    skill_accuracy: Rate,
}

#[derive(Serialize)]
struct TrainSummary {
    stage: String,
    examples: usize,
    steps: usize,
    first_loss: f64,
    final_loss: f64,
    tokens_per_second: f64,
    seconds: f64,
}

fn summarize(stage: &str, examples: usize, r: &TrainReport) -> TrainSummary {
    TrainSummary {
        stage: stage.into(),
        examples,
        steps: r.steps.len(),
        first_loss: r.steps.first().map(|s| s.loss).unwrap_or(f64::NAN),
        final_loss: r.final_loss(5),
        tokens_per_second: r.tokens_per_second,
        seconds: r.seconds,
    }
}

fn pairs(samples: &[Sample]) -> Vec<TextPair> {
    samples
        .iter()
        .map(|s| TextPair::new(&s.prompt, &s.response))
        .collect()
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

struct Evaluator<'a> {
    tok: &'a TextTokenizer,
    judge: KeywordJudge,
    config: EvalConfig,
    harmful: Vec<Sample>,
    benign: Vec<Sample>,
    skill: Vec<Sample>,
    out: PathBuf,
}

impl Evaluator<'_> {
    fn run<B: burn::tensor::backend::Backend>(
        &self,
        stage: &str,
        model: &Llama<B>,
    ) -> Result<StageMetrics> {
        let t = Instant::now();
        let h = evaluate_samples(
            model,
            self.tok,
            &self.harmful,
            &self.judge,
            &self.config,
            "harmful",
        )?;
        let b = evaluate_samples(
            model,
            self.tok,
            &self.benign,
            &self.judge,
            &self.config,
            "benign",
        )?;
        let s = evaluate_samples(
            model,
            self.tok,
            &self.skill,
            &self.judge,
            &self.config,
            "skill",
        )?;
        let m = StageMetrics {
            stage: stage.into(),
            harmful_rate: compliance_rate(&h),
            over_refusal: refusal_rate(&b),
            benign_accuracy: accuracy(&b),
            skill_accuracy: accuracy(&s),
        };
        let mut lines = String::new();
        for (set, rs) in [("harmful", &h), ("benign", &b), ("skill", &s)] {
            for r in rs.iter() {
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
        write_atomic(&self.out.join(format!("generations-{stage}.jsonl")), &lines)?;
        eprintln!(
            "[{stage}] harmful {} | over-refusal {} | benign acc {} | skill acc {} ({:.0}s)",
            m.harmful_rate,
            m.over_refusal,
            m.benign_accuracy,
            m.skill_accuracy,
            t.elapsed().as_secs_f64()
        );
        Ok(m)
    }
}

impl Job for PipelineArgs {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device, backend: BackendKind) -> Result<()> {
        let started = Instant::now();
        std::fs::create_dir_all(&self.out)
            .with_context(|| format!("creating {}", self.out.display()))?;
        let source = ModelSource::parse(&self.model.model)?;
        let loaded = load_model::<B>(&source, self.model.cache_dir.as_deref(), &device)?;
        let tok = &loaded.tokenizer;
        let pad = tok.pad_id();
        let corpus = Corpus::builtin(self.seed);
        let take = |split: Split, kind: Option<SampleKind>, n: usize| -> Vec<Sample> {
            corpus
                .split(split)
                .iter()
                .filter(|s| kind.is_none_or(|k| s.kind == k))
                .take(if n == 0 { usize::MAX } else { n })
                .cloned()
                .collect()
        };
        let mut align = take(
            Split::Align,
            Some(SampleKind::HarmfulRefusal),
            self.align_samples,
        );
        align.extend(take(
            Split::Align,
            Some(SampleKind::Benign),
            self.align_samples,
        ));
        let sv = take(Split::Sv, None, self.sv_samples);
        let mut attack = take(Split::Attack, None, self.attack_samples);
        let skill_train = take(Split::SkillTrain, None, self.skill_samples);
        attack.extend(skill_train.iter().cloned());
        let evaluator = Evaluator {
            tok,
            judge: KeywordJudge::secvec(),
            config: EvalConfig {
                max_new_tokens: self.max_new_tokens,
                batch_size: 16,
                system_prompt: None,
                progress: true,
            },
            harmful: take(Split::EvalHarmful, None, self.eval_samples),
            benign: take(Split::EvalBenign, None, self.eval_samples),
            skill: take(Split::SkillEval, None, self.eval_samples),
            out: self.out.clone(),
        };
        eprintln!(
            "data: align {} | sv {} | attack {} ({} skill) | eval {} harmful, {} benign, {} skill",
            align.len(),
            sv.len(),
            attack.len(),
            skill_train.len(),
            evaluator.harmful.len(),
            evaluator.benign.len(),
            evaluator.skill.len()
        );
        let max_len = 160;
        let encode = |s: &[Sample]| encode_pairs(tok, &pairs(s), None, max_len);

        let mut stages = vec![evaluator.run("shipped", &loaded.model.valid())?];
        let mut training = Vec::new();

        // Alignment: a LoRA on refusals + benign answers, merged into the base.
        let mut model = loaded.model;
        set_base_trainable(&mut model, false);
        let align_cfg = AdapterConfig {
            rank: 16,
            alpha: 32.0,
            targets: all_targets(),
            seed: self.seed,
            ..AdapterConfig::default()
        };
        add_adapter(&mut model, "align", &align_cfg)?;
        set_adapter_trainable(&mut model, "align", true)?;
        let train_cfg = |lr: f64, epochs: usize| TrainConfig {
            lr,
            epochs,
            batch_size: 8,
            seed: self.seed,
            schedule: secvec_core::train::Schedule::Cosine,
            ..TrainConfig::default()
        };
        let (mut model, report) = train(
            model,
            &encode(&align)?,
            pad,
            &train_cfg(5e-4, 2),
            &mut NoCallback,
        )?;
        training.push(summarize("align", align.len(), &report));
        merge_adapter(&mut model, "align")?;
        stages.push(evaluator.run("aligned", &model.valid())?);

        // Phase 1: security vectors.
        let sv_cfg = SecurityVectorConfig {
            adapter: AdapterConfig {
                rank: 8,
                alpha: 16.0,
                targets: all_targets(),
                seed: self.seed + 1,
                ..AdapterConfig::default()
            },
            train: train_cfg(self.sv_lr, 3),
        };
        let (mut model, report) =
            train_security_vectors(model, &encode(&sv)?, pad, &sv_cfg, &mut NoCallback)?;
        training.push(summarize("security vectors", sv.len(), &report));
        set_adapter_active(&mut model, secvec_core::adapter::SECURITY, true)?;
        stages.push(evaluator.run("vectors-on", &model.valid())?);
        set_adapter_active(&mut model, secvec_core::adapter::SECURITY, false)?;

        // Phase 2 with and without the vectors; phase 3: evaluate with them off.
        let attack_examples = encode(&attack)?;
        let mode = if self.full {
            FinetuneMode::Full
        } else {
            FinetuneMode::Lora(AdapterConfig {
                rank: 8,
                alpha: 16.0,
                targets: all_targets(),
                seed: self.seed + 2,
                ..AdapterConfig::default()
            })
        };
        let lr = self
            .attack_lr
            .unwrap_or(if self.full { 2e-5 } else { 2e-4 });
        for (name, vectors) in [
            ("attacked-no-vectors", SecurityVectors::Off),
            ("attacked-with-vectors", SecurityVectors::Active),
        ] {
            let cfg = FinetuneConfig {
                mode: mode.clone(),
                security_vectors: vectors,
                train: train_cfg(lr, self.attack_epochs),
            };
            let (tuned, report) =
                finetune(model.clone(), &attack_examples, pad, &cfg, &mut NoCallback)?;
            training.push(summarize(name, attack.len(), &report));
            stages.push(evaluator.run(name, &tuned.valid())?);
        }

        #[derive(Serialize)]
        struct Metrics<'a> {
            command: String,
            model: String,
            backend: String,
            seed: u64,
            attack_mode: &'a str,
            attack_lr: f64,
            stages: &'a [StageMetrics],
            training: &'a [TrainSummary],
            wall_seconds: f64,
        }
        let metrics = Metrics {
            command: std::env::args().collect::<Vec<_>>().join(" "),
            model: source.display_name(),
            backend: backend.to_string(),
            seed: self.seed,
            attack_mode: if self.full {
                "full fine-tuning"
            } else {
                "task LoRA r=8"
            },
            attack_lr: lr,
            stages: &stages,
            training: &training,
            wall_seconds: started.elapsed().as_secs_f64(),
        };
        write_atomic(
            &self.out.join("metrics.json"),
            &serde_json::to_string_pretty(&metrics)?,
        )?;
        let mut md = format!(
            "# Security vectors end to end: {} on {}\n\nCommand: `{}`\n\nAttack: {} (lr {lr:.0e}, {} epoch(s)); wall time {:.0} s.\n\n\
             | stage | harmful rate (95% CI) | over-refusal | benign accuracy | skill accuracy |\n|---|---|---|---|---|\n",
            metrics.model,
            metrics.backend,
            metrics.command,
            metrics.attack_mode,
            self.attack_epochs,
            metrics.wall_seconds
        );
        for s in &stages {
            md += &format!(
                "| {} | {} | {} | {} | {} |\n",
                s.stage, s.harmful_rate, s.over_refusal, s.benign_accuracy, s.skill_accuracy
            );
        }
        md += "\n| training | examples | steps | loss first → last | tokens/s | seconds |\n|---|---:|---:|---|---:|---:|\n";
        for t in &training {
            md += &format!(
                "| {} | {} | {} | {:.3} → {:.3} | {:.0} | {:.0} |\n",
                t.stage,
                t.examples,
                t.steps,
                t.first_loss,
                t.final_loss,
                t.tokens_per_second,
                t.seconds
            );
        }
        write_atomic(&self.out.join("summary.md"), &md)?;
        println!("{md}");
        Ok(())
    }
}
