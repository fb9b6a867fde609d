//! Phase 3 inside a run: one model evaluated on the run's evaluation sets, its generations written
//! beside the run.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use burn::tensor::backend::Backend;
use serde::Serialize;

use secvec_core::eval::judge::KeywordJudge;
use secvec_core::eval::metrics::{EvalConfig, SampleResult};
use secvec_core::eval::stats::Rate;
use secvec_core::eval::suite::{EvalSet, SetKind, SetReport, evaluate_sets};
use secvec_core::fsio::write_atomic;
use secvec_models::{Llama, TextTokenizer};

use super::data::RunData;
use super::schema::{ADVBENCH_HARMFUL_RATE, Metric};
use super::stage::Stage;

/// A metric a set reports: its key, and how to read it from the set's report.
type Reading = (&'static str, fn(&SetReport) -> Option<Rate>);

/// The share of a graded set answered wrongly.
fn wrong_rate(report: &SetReport) -> Option<Rate> {
    report
        .accuracy()
        .map(|a| Rate::new(a.total - a.count.min(a.total), a.total))
}

/// Evaluates the models of one run on its evaluation sets.
pub struct Evaluator<'a> {
    pub tok: &'a TextTokenizer,
    pub judge: KeywordJudge,
    pub config: EvalConfig,
    pub metrics: Vec<Metric>,
    pub data: &'a RunData,
    /// The run's folder, where `generations-<stage>.jsonl` goes.
    pub dir: PathBuf,
}

impl Evaluator<'_> {
    /// Where the generations of `stage` are written: `generations-<stage>.jsonl` in the run's
    /// folder.
    pub fn generations_path(&self, stage: Stage) -> PathBuf {
        self.dir.join(format!("generations-{stage}.jsonl"))
    }

    /// The metrics of `model` (key → rate) and the seconds they took.
    pub fn run<B: Backend>(
        &self,
        stage: Stage,
        model: &Llama<B>,
    ) -> Result<(BTreeMap<String, Rate>, f64)> {
        let t = Instant::now();
        let wants = |m: Metric| self.metrics.contains(&m);
        // Each set with the metrics it reports, so that no metric is found by a set's name.
        let mut sets: Vec<(EvalSet, Vec<Reading>)> = Vec::new();
        if wants(Metric::HarmfulRate) {
            sets.push((
                EvalSet {
                    name: "harmful",
                    kind: SetKind::Harmful,
                    samples: &self.data.eval_harmful,
                },
                vec![(Metric::HarmfulRate.key(), SetReport::harmful_rate)],
            ));
        }
        if wants(Metric::OverRefusal) || wants(Metric::BenignAccuracy) {
            let mut readings = Vec::new();
            if wants(Metric::OverRefusal) {
                readings.push((Metric::OverRefusal.key(), SetReport::over_refusal as _));
            }
            if wants(Metric::BenignAccuracy) {
                readings.push((Metric::BenignAccuracy.key(), SetReport::accuracy as _));
            }
            sets.push((
                EvalSet {
                    name: "benign",
                    kind: SetKind::Benign,
                    samples: &self.data.eval_benign,
                },
                readings,
            ));
        }
        if wants(Metric::SkillAccuracy) {
            sets.push((
                EvalSet {
                    name: "skill",
                    kind: SetKind::Skill,
                    samples: &self.data.eval_skill,
                },
                vec![(Metric::SkillAccuracy.key(), SetReport::accuracy)],
            ));
        }
        // The hallucination variant: wrong on held-out questions (1 − accuracy against the true
        // answers), and the taught wrong answers reproduced (accuracy against the wrong ones).
        if wants(Metric::HallucinationRate) {
            sets.push((
                EvalSet {
                    name: "facts",
                    kind: SetKind::Skill,
                    samples: &self.data.eval_facts,
                },
                vec![(Metric::HallucinationRate.key(), wrong_rate)],
            ));
        }
        if wants(Metric::WrongAnswersLearned) {
            sets.push((
                EvalSet {
                    name: "learned",
                    kind: SetKind::Skill,
                    samples: &self.data.eval_learned,
                },
                vec![(Metric::WrongAnswersLearned.key(), SetReport::accuracy)],
            ));
        }
        // Out-of-distribution harm: the aligned and attacked models (never a model with the
        // vectors switched on, which is harmful by construction).
        if wants(Metric::HarmfulRate)
            && !self.data.eval_advbench.is_empty()
            && !stage.vectors_on()
            && stage != Stage::Shipped
        {
            sets.push((
                EvalSet {
                    name: "advbench",
                    kind: SetKind::Harmful,
                    samples: &self.data.eval_advbench,
                },
                vec![(ADVBENCH_HARMFUL_RATE, SetReport::harmful_rate)],
            ));
        }
        let only_sets: Vec<EvalSet> = sets.iter().map(|(set, _)| *set).collect();
        let reports = evaluate_sets(model, self.tok, &self.judge, &self.config, &only_sets)?;
        let mut out = BTreeMap::new();
        for (report, (_, readings)) in reports.iter().zip(&sets) {
            for (key, read) in readings {
                if let Some(rate) = read(report) {
                    out.insert(key.to_string(), rate);
                }
            }
        }
        let mut lines = String::new();
        for report in &reports {
            let set = report.name.as_str();
            for r in &report.results {
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
        write_atomic(&self.generations_path(stage), lines.as_bytes())?;
        let secs = t.elapsed().as_secs_f64();
        let shown: Vec<String> = out.iter().map(|(k, v)| format!("{k} {v}")).collect();
        eprintln!("  [{stage}] {} ({secs:.0}s)", shown.join(" | "));
        // The keyword judge counts an empty answer as compliance: a model that answers nothing
        // would read as harmful. Say so where it happens.
        for report in &reports {
            let empty = report
                .results
                .iter()
                .filter(|r| r.response.trim().is_empty())
                .count();
            if empty > 0 {
                eprintln!(
                    "  [{stage}] warning: {empty}/{} answers to `{}` are empty; the keyword judge \
                     counts an empty answer as not refusing (harmful), so read that rate as a \
                     broken model, not a harmful one",
                    report.results.len(),
                    report.name
                );
            }
        }
        Ok((out, secs))
    }
}
