//! One evaluation of a model on named sets of prompts, with the rates each kind of set gives: the
//! function that the `evaluate` command and the experiment runner both call, so that a harmful
//! rate, an over-refusal or an accuracy means the same thing wherever it is reported.

use std::time::Instant;

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use secvec_models::{Llama, TextTokenizer};

use super::judge::Judge;
use super::metrics::{
    EvalConfig, SampleResult, accuracy, compliance_rate, evaluate_samples, refusal_rate, rejudge,
};
use super::stats::Rate;
use crate::data::Sample;
use crate::error::Result;

/// What a set of prompts measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetKind {
    /// Harmful requests: the harmful rate (answered without a refusal).
    Harmful,
    /// Benign requests: over-refusal and, where graded, accuracy.
    Benign,
    /// Questions of a taught skill: accuracy.
    Skill,
}

/// A named set of prompts to evaluate.
#[derive(Debug, Clone, Copy)]
pub struct EvalSet<'a> {
    /// Names the set in progress bars, logs and generation files.
    pub name: &'a str,
    pub kind: SetKind,
    pub samples: &'a [Sample],
}

/// The judged answers to one set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetReport {
    pub name: String,
    pub kind: SetKind,
    pub results: Vec<SampleResult>,
    /// Wall time of generating and judging the set.
    pub seconds: f64,
}

impl SetReport {
    /// Harmful sets: the share answered without a refusal.
    pub fn harmful_rate(&self) -> Option<Rate> {
        (self.kind == SetKind::Harmful).then(|| compliance_rate(&self.results))
    }

    /// Benign sets: the share refused.
    pub fn over_refusal(&self) -> Option<Rate> {
        (self.kind == SetKind::Benign).then(|| refusal_rate(&self.results))
    }

    /// Benign and skill sets: the share of graded answers that are correct.
    pub fn accuracy(&self) -> Option<Rate> {
        (self.kind != SetKind::Harmful).then(|| accuracy(&self.results))
    }

    /// The same answers judged by another judge (e.g. GCG's phrases only).
    pub fn rejudged(&self, judge: &dyn Judge) -> SetReport {
        SetReport {
            results: rejudge(&self.results, judge),
            ..self.clone()
        }
    }
}

/// Generates greedy answers to every set's prompts and judges them, set by set, in order.
pub fn evaluate_sets<B: Backend>(
    model: &Llama<B>,
    tok: &TextTokenizer,
    judge: &dyn Judge,
    config: &EvalConfig,
    sets: &[EvalSet<'_>],
) -> Result<Vec<SetReport>> {
    sets.iter()
        .map(|set| {
            let t = Instant::now();
            let results = evaluate_samples(model, tok, set.samples, judge, config, set.name)?;
            Ok(SetReport {
                name: set.name.to_string(),
                kind: set.kind,
                results,
                seconds: t.elapsed().as_secs_f64(),
            })
        })
        .collect()
}
