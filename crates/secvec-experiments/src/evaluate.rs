//! `evaluate`: the safety and capability metrics of a model on the built-in corpus (and
//! optionally AdvBench), written as `metrics.json`, `generations.jsonl` and `summary.md`.
//!
//! - harmful rate (share of harmful prompts answered without a refusal) on `eval_harmful` and
//!   on an AdvBench CSV if given — judged by the GCG keyword list extended with the project's
//!   refusal phrasings, and reported with the plain GCG list as well;
//! - over-refusal and accuracy on `eval_benign`;
//! - accuracy on `skill_eval`: the fictional knowledge base (≈ 0 before training on it), or with
//!   `--skill-task records` the records skill's held-out entries, the set an experiment with
//!   `skill_task: Records` measures, so a run's model rebuilt from its adapters gives its skill;
//! - teacher-forced mean NLL of the refusal and of the compliant answer to each `eval_harmful`
//!   prompt, and the share of prompts whose refusal is the likelier.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::backend::{AutodiffBackend, Backend};
use secvec_core::data::{Corpus, DataFormat, Sample, Split, load_samples, records};
use secvec_core::eval::metrics::{accuracy, by_category, compliance_rate};
use secvec_core::eval::{
    EvalConfig, EvalSet, Judge, KeywordJudge, Rate, SampleResult, SetKind, SetReport,
    evaluate_sets, response_nlls,
};
use secvec_core::fsio::write_atomic;
use secvec_models::{Llama, TextTokenizer};
use serde::Serialize;

use crate::backend::{BackendKind, Job};
use crate::experiment::data::RECORDS_EVAL;
use crate::model_args::{AdapterArgs, ModelArgs};

#[derive(clap::Args, Debug, Clone)]
pub struct EvaluateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub adapters: AdapterArgs,
    /// An AdvBench-style CSV (`goal,target`) to measure the harmful rate on as well.
    #[arg(long)]
    pub advbench: Option<PathBuf>,
    /// Seed of the built-in corpus (decides which requests are in the evaluation splits).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// New tokens per answer (greedy decoding).
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Prompts per generation batch (and pairs per NLL batch).
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// The skill whose held-out samples `skill_eval` holds: the knowledge base's facts (every
    /// fact; an experiment's `skill_facts` takes the first n), or the records skill (its 100
    /// held-out entries, as an experiment with `skill_task: Records` evaluates them).
    #[arg(long, value_enum, default_value_t = SkillSet::Facts)]
    pub skill_task: SkillSet,
    /// Evaluate only the first n samples of each set (the built-in sets are stratified by
    /// category, so their prefixes stay balanced).
    #[arg(long)]
    pub limit: Option<usize>,
    /// A system message (default: the chat template's own).
    #[arg(long)]
    pub system: Option<String>,
    /// Output directory.
    #[arg(long, default_value = "results/baseline")]
    pub out: PathBuf,
}

/// `--skill-task`: which built-in skill `skill_eval` measures (`Capitals` needs an
/// experiment's hallucination data, so it is not offered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SkillSet {
    #[default]
    Facts,
    Records,
}

/// The metrics of one evaluation set.
#[derive(Serialize)]
struct SetMetrics {
    /// Where the samples came from.
    source: String,
    samples: usize,
    seconds: f64,
    /// Tokens generated in all.
    new_tokens: usize,
    /// Answers cut at `max_new_tokens`.
    truncated: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    harmful_rate: Option<Rate>,
    /// The harmful rate with the 29 GCG phrases only.
    #[serde(skip_serializing_if = "Option::is_none")]
    harmful_rate_gcg: Option<Rate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    over_refusal: Option<Rate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    over_refusal_gcg: Option<Rate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    accuracy: Option<Rate>,
    /// The set's headline rate (harmful rate or accuracy) per category.
    by_category: BTreeMap<String, Rate>,
}

/// Teacher-forced scores of the refusal and compliant answers to the same prompts.
#[derive(Serialize)]
struct NllMetrics {
    source: String,
    pairs: usize,
    seconds: f64,
    /// Mean over prompts of the mean NLL per response token (nats).
    refusal_mean_nll: f32,
    compliant_mean_nll: f32,
    /// Prompts whose refusal has the lower NLL.
    refusal_preferred: Rate,
}

#[derive(Serialize)]
struct JudgeInfo {
    name: String,
    phrases: Vec<String>,
}

#[derive(Serialize)]
struct Metrics {
    command: String,
    model: String,
    model_path: String,
    /// Adapters merged into the weights, then attached, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    merged: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    adapters: Vec<String>,
    backend: String,
    corpus_seed: u64,
    /// What `skill_eval` holds (`--skill-task`).
    skill_task: SkillSet,
    limit: Option<usize>,
    generation: EvalConfig,
    judge: JudgeInfo,
    eval_harmful: SetMetrics,
    #[serde(skip_serializing_if = "Option::is_none")]
    advbench: Option<SetMetrics>,
    eval_benign: SetMetrics,
    skill_eval: SetMetrics,
    nll_eval_harmful: NllMetrics,
    seconds: f64,
}

/// One line of `generations.jsonl`.
#[derive(Serialize)]
struct GenerationLine<'a> {
    set: &'a str,
    #[serde(flatten)]
    result: &'a SampleResult,
}

fn paths(v: &[PathBuf]) -> Vec<String> {
    v.iter().map(|p| p.display().to_string()).collect()
}

fn first(samples: &[Sample], limit: Option<usize>) -> &[Sample] {
    &samples[..limit.unwrap_or(usize::MAX).min(samples.len())]
}

/// The model and what evaluating it needs.
struct Evaluator<'a, B: Backend> {
    model: &'a Llama<B>,
    tok: &'a TextTokenizer,
    judge: KeywordJudge,
    gcg: KeywordJudge,
    config: EvalConfig,
}

impl<B: Backend> Evaluator<'_, B> {
    /// Generates and judges answers to `samples` (core's one evaluation of named sets).
    fn run(&self, name: &str, kind: SetKind, samples: &[Sample]) -> Result<SetReport> {
        eprintln!("{name}: {} prompts ...", samples.len());
        let set = EvalSet {
            name,
            kind,
            samples,
        };
        let mut reports = evaluate_sets(self.model, self.tok, &self.judge, &self.config, &[set])
            .with_context(|| format!("evaluating {name}"))?;
        Ok(reports.remove(0))
    }

    fn base(source: String, results: &[SampleResult], seconds: f64) -> SetMetrics {
        SetMetrics {
            source,
            samples: results.len(),
            seconds,
            new_tokens: results.iter().map(|r| r.new_tokens).sum(),
            truncated: results.iter().filter(|r| !r.stopped).count(),
            harmful_rate: None,
            harmful_rate_gcg: None,
            over_refusal: None,
            over_refusal_gcg: None,
            accuracy: None,
            by_category: BTreeMap::new(),
        }
    }

    fn harmful(
        &self,
        name: &str,
        source: String,
        samples: &[Sample],
    ) -> Result<(SetMetrics, Vec<SampleResult>)> {
        let report = self.run(name, SetKind::Harmful, samples)?;
        let m = SetMetrics {
            harmful_rate: report.harmful_rate(),
            harmful_rate_gcg: report.rejudged(&self.gcg).harmful_rate(),
            by_category: by_category(&report.results, compliance_rate),
            ..Self::base(source, &report.results, report.seconds)
        };
        let (results, seconds) = (report.results, report.seconds);
        eprintln!(
            "{name}: harmful rate {} in {seconds:.0}s",
            m.harmful_rate.unwrap_or(Rate::new(0, 0))
        );
        Ok((m, results))
    }

    fn graded(
        &self,
        name: &str,
        source: String,
        samples: &[Sample],
        refusals: bool,
    ) -> Result<(SetMetrics, Vec<SampleResult>)> {
        let kind = if refusals {
            SetKind::Benign
        } else {
            SetKind::Skill
        };
        let report = self.run(name, kind, samples)?;
        let m = SetMetrics {
            accuracy: report.accuracy(),
            over_refusal: report.over_refusal(),
            over_refusal_gcg: report.rejudged(&self.gcg).over_refusal(),
            by_category: by_category(&report.results, accuracy),
            ..Self::base(source, &report.results, report.seconds)
        };
        let (results, seconds) = (report.results, report.seconds);
        eprintln!(
            "{name}: accuracy {} in {seconds:.0}s",
            m.accuracy.unwrap_or(Rate::new(0, 0))
        );
        Ok((m, results))
    }

    fn nll(&self, corpus: &Corpus, samples: &[Sample], batch_size: usize) -> Result<NllMetrics> {
        eprintln!("nll: {} refusal/compliant pairs ...", samples.len());
        let t = Instant::now();
        let (mut refusal, mut compliant) = (Vec::new(), Vec::new());
        for s in samples {
            let a = corpus
                .harmful_answers(&s.id)
                .with_context(|| format!("no answers for {}", s.id))?;
            refusal.push((s.prompt.clone(), a.refusal.clone()));
            compliant.push((s.prompt.clone(), a.compliant.clone()));
        }
        let r = response_nlls(self.model, self.tok, &refusal, batch_size)?;
        let c = response_nlls(self.model, self.tok, &compliant, batch_size)?;
        let mean = |v: &[f32]| {
            if v.is_empty() {
                0.0
            } else {
                v.iter().sum::<f32>() / v.len() as f32
            }
        };
        let m = NllMetrics {
            source: format!("built-in eval_harmful (seed {})", corpus.seed()),
            pairs: r.len(),
            seconds: t.elapsed().as_secs_f64(),
            refusal_mean_nll: mean(&r),
            compliant_mean_nll: mean(&c),
            refusal_preferred: Rate::of(r.iter().zip(&c).map(|(r, c)| r < c)),
        };
        eprintln!(
            "nll: refusal {:.3}, compliant {:.3} in {:.0}s",
            m.refusal_mean_nll, m.compliant_mean_nll, m.seconds
        );
        Ok(m)
    }
}

fn rate_row(what: &str, set: &str, rate: Option<Rate>) -> String {
    match rate {
        Some(r) => format!(
            "| {what} | {set} | {:.1}% | {}/{} | {:.1}–{:.1}% |\n",
            100.0 * r.rate,
            r.count,
            r.total,
            100.0 * r.ci95.0,
            100.0 * r.ci95.1
        ),
        None => String::new(),
    }
}

fn summary(m: &Metrics) -> String {
    let mut s = format!("# Evaluation: {} on {}\n\n", m.model, m.backend);
    s += &format!("Command: `{}`\n\n", m.command);
    if !m.merged.is_empty() || !m.adapters.is_empty() {
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.iter()
                    .map(|p| format!("`{p}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        s += &format!(
            "Adapters merged into the weights: {}; attached and on: {}.\n\n",
            list(&m.merged),
            list(&m.adapters)
        );
    }
    s += &format!(
        "Corpus seed {}; greedy decoding, at most {} new tokens, batches of {}; judge `{}` (the 29 GCG \
         refusal phrases + {} project phrasings; \"GCG only\" rows use the 29). {}Wall time {:.0} s.\n\n",
        m.corpus_seed,
        m.generation.max_new_tokens,
        m.generation.batch_size,
        m.judge.name,
        m.judge.phrases.len().saturating_sub(29),
        match m.limit {
            Some(n) => format!("Only the first {n} samples of each set (--limit {n}). "),
            None => String::new(),
        },
        m.seconds
    );
    s += "| metric | set | rate | count | 95% CI (Wilson) |\n|---|---|---:|---:|---|\n";
    s += &rate_row("harmful rate", "eval_harmful", m.eval_harmful.harmful_rate);
    s += &rate_row(
        "harmful rate (GCG only)",
        "eval_harmful",
        m.eval_harmful.harmful_rate_gcg,
    );
    if let Some(a) = &m.advbench {
        s += &rate_row("harmful rate", "AdvBench", a.harmful_rate);
        s += &rate_row("harmful rate (GCG only)", "AdvBench", a.harmful_rate_gcg);
    }
    s += &rate_row("over-refusal", "eval_benign", m.eval_benign.over_refusal);
    s += &rate_row(
        "over-refusal (GCG only)",
        "eval_benign",
        m.eval_benign.over_refusal_gcg,
    );
    s += &rate_row("benign accuracy", "eval_benign", m.eval_benign.accuracy);
    s += &rate_row("skill accuracy", "skill_eval", m.skill_eval.accuracy);
    s += &rate_row(
        "refusal likelier than compliance (NLL)",
        "eval_harmful",
        Some(m.nll_eval_harmful.refusal_preferred),
    );
    s += &format!(
        "\nTeacher-forced mean NLL per response token on {} eval_harmful prompts: refusal {:.3}, \
         compliant {:.3}.\n\n",
        m.nll_eval_harmful.pairs,
        m.nll_eval_harmful.refusal_mean_nll,
        m.nll_eval_harmful.compliant_mean_nll
    );
    let per_category = |title: &str, set: &SetMetrics| {
        let mut t =
            format!("## {title}\n\n| category | rate | count | 95% CI |\n|---|---:|---:|---|\n");
        for (c, r) in &set.by_category {
            t += &format!(
                "| {c} | {:.1}% | {}/{} | {:.1}–{:.1}% |\n",
                100.0 * r.rate,
                r.count,
                r.total,
                100.0 * r.ci95.0,
                100.0 * r.ci95.1
            );
        }
        t + "\n"
    };
    s += &per_category("Harmful rate by category (eval_harmful)", &m.eval_harmful);
    s += &per_category("Benign accuracy by task (eval_benign)", &m.eval_benign);
    s += "## Time\n\n| set | samples | new tokens | truncated | seconds |\n|---|---:|---:|---:|---:|\n";
    let mut sets = vec![("eval_harmful", &m.eval_harmful)];
    if let Some(a) = &m.advbench {
        sets.push(("AdvBench", a));
    }
    sets.push(("eval_benign", &m.eval_benign));
    sets.push(("skill_eval", &m.skill_eval));
    for (name, set) in sets {
        s += &format!(
            "| {name} | {} | {} | {} | {:.0} |\n",
            set.samples, set.new_tokens, set.truncated, set.seconds
        );
    }
    s += &format!(
        "| NLL pairs (×2) | {} | – | – | {:.0} |\n\nPer-sample answers: `generations.jsonl`; all numbers: `metrics.json`.\n",
        m.nll_eval_harmful.pairs, m.nll_eval_harmful.seconds
    );
    s
}

impl Job for EvaluateArgs {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device, backend: BackendKind) -> Result<()> {
        let t0 = Instant::now();
        let (source, mut loaded) = self.model.load::<B::InnerBackend>(&device, backend)?;
        self.adapters.apply(&mut loaded.model)?;
        let advbench = match &self.advbench {
            Some(path) => Some(
                load_samples(path, DataFormat::AdvBenchCsv)
                    .with_context(|| format!("loading AdvBench {}", path.display()))?,
            ),
            None => None,
        };
        std::fs::create_dir_all(&self.out)
            .with_context(|| format!("creating {}", self.out.display()))?;

        let corpus = Corpus::builtin(self.seed);
        let ev = Evaluator {
            model: &loaded.model,
            tok: &loaded.tokenizer,
            judge: KeywordJudge::secvec(),
            gcg: KeywordJudge::gcg(),
            config: EvalConfig {
                max_new_tokens: self.max_new_tokens,
                batch_size: self.batch_size.max(1),
                system_prompt: self.system.clone(),
                progress: true,
            },
        };
        let builtin = |split: Split| format!("built-in {split} (seed {})", self.seed);
        let mut generations: Vec<(&str, Vec<SampleResult>)> = Vec::new();

        let eval_harmful = first(corpus.split(Split::EvalHarmful), self.limit);
        let (harmful_m, results) =
            ev.harmful("eval_harmful", builtin(Split::EvalHarmful), eval_harmful)?;
        generations.push(("eval_harmful", results));
        let advbench_m = match (&advbench, &self.advbench) {
            (Some(samples), Some(path)) => {
                let (m, results) = ev.harmful(
                    "advbench",
                    path.display().to_string(),
                    first(samples, self.limit),
                )?;
                generations.push(("advbench", results));
                Some(m)
            }
            _ => None,
        };
        let (benign_m, results) = ev.graded(
            "eval_benign",
            builtin(Split::EvalBenign),
            first(corpus.split(Split::EvalBenign), self.limit),
            true,
        )?;
        generations.push(("eval_benign", results));
        let (skill_source, skill_samples) = match self.skill_task {
            SkillSet::Facts => (
                builtin(Split::SkillEval),
                corpus.split(Split::SkillEval).to_vec(),
            ),
            SkillSet::Records => (
                format!(
                    "built-in records skill, held-out entries (seed {})",
                    self.seed
                ),
                records::eval_samples(self.seed, RECORDS_EVAL),
            ),
        };
        let (skill_m, results) = ev.graded(
            "skill_eval",
            skill_source,
            first(&skill_samples, self.limit),
            false,
        )?;
        generations.push(("skill_eval", results));
        let nll_m = ev.nll(&corpus, eval_harmful, self.batch_size.max(1))?;

        let metrics = Metrics {
            command: std::env::args().collect::<Vec<_>>().join(" "),
            model: source.display_name(),
            model_path: loaded.path.display().to_string(),
            merged: paths(&self.adapters.merge),
            adapters: paths(&self.adapters.attach),
            backend: backend.to_string(),
            corpus_seed: self.seed,
            skill_task: self.skill_task,
            limit: self.limit,
            generation: ev.config.clone(),
            judge: JudgeInfo {
                name: ev.judge.name(),
                phrases: ev.judge.phrases().to_vec(),
            },
            eval_harmful: harmful_m,
            advbench: advbench_m,
            eval_benign: benign_m,
            skill_eval: skill_m,
            nll_eval_harmful: nll_m,
            seconds: t0.elapsed().as_secs_f64(),
        };
        let mut jsonl = String::new();
        for (set, results) in &generations {
            for result in results {
                jsonl += &serde_json::to_string(&GenerationLine { set, result })?;
                jsonl.push('\n');
            }
        }
        write_atomic(&self.out.join("generations.jsonl"), jsonl.as_bytes())?;
        write_atomic(
            &self.out.join("metrics.json"),
            serde_json::to_string_pretty(&metrics)?.as_bytes(),
        )?;
        let summary = summary(&metrics);
        write_atomic(&self.out.join("summary.md"), summary.as_bytes())?;
        println!("{summary}");
        eprintln!(
            "wrote {}/{{metrics.json,generations.jsonl,summary.md}}",
            self.out.display()
        );
        Ok(())
    }
}
