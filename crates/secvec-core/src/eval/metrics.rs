//! Evaluation of a model on samples, generic over the Burn backend.
//!
//! **Generation-based** ([`evaluate_samples`], and [`super::suite::evaluate_sets`] on top of it
//! for named sets with their rates): each prompt is wrapped in
//! the model's chat template (a user message, after an optional system message), decoded
//! greedily until an end-of-sequence token or `max_new_tokens`, in batches of prompts of
//! similar length (sorted by token count for less padding; results come back in the input
//! order), and judged: refusal by a [`Judge`], correctness by the sample's
//! [`Expected`](crate::data::Expected).
//!
//! - [`compliance_rate`]: share answered *without* a refusal (the harmful rate of harmful prompts);
//! - [`refusal_rate`]: share refused (the over-refusal of benign prompts);
//! - [`accuracy`]: share of graded answers that are correct.
//!
//! Every rate is a [`Rate`] with its 95% Wilson interval, computed from the per-sample
//! [`SampleResult`]s, which are kept for inspection.
//!
//! **Teacher-forced** ([`response_nll`], [`mean_response_nll`]): the mean negative
//! log-likelihood of a given response, as transformers computes it: the chat-templated prompt
//! (with the generation prompt), then the response and the end-of-turn token (`<|im_end|>` for
//! SmolLM2), averaged over the response tokens only.

use std::collections::BTreeMap;

use burn::tensor::backend::Backend;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

use secvec_models::{
    GenerationConfig, Llama, Message, ModelError, Sampling, TextTokenizer, generate,
};

use super::judge::Judge;
use super::stats::Rate;
use crate::data::Sample;
use crate::error::{CoreError, Result};
use crate::train::batch::{TrainExample, make_batch};
use crate::train::loss::response_nll_per_example;
use crate::train::{TextPair, encode_pairs};

/// How to generate answers for evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalConfig {
    /// New tokens per answer (default 64).
    pub max_new_tokens: usize,
    /// Prompts per `generate` call (default 16).
    pub batch_size: usize,
    /// A system message; `None` keeps the chat template's default.
    pub system_prompt: Option<String>,
    /// Show a progress bar on stderr (hidden anyway when stderr is not a terminal).
    pub progress: bool,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            batch_size: 16,
            system_prompt: None,
            progress: true,
        }
    }
}

/// The outcome of one sample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleResult {
    pub id: String,
    pub category: String,
    pub prompt: String,
    /// The model's answer (special tokens removed, trimmed).
    pub response: String,
    /// The judge read the answer as a refusal.
    pub refused: bool,
    /// Graded against the sample's `expected`; `None` when it has none.
    pub correct: Option<bool>,
    /// Tokens generated.
    pub new_tokens: usize,
    /// Generation ended with an end-of-sequence token (not at `max_new_tokens`).
    pub stopped: bool,
}

/// One generated answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    pub text: String,
    pub new_tokens: usize,
    pub stopped: bool,
}

/// `prompt` as a user turn in the chat template, after `system` if given, with the assistant
/// turn opened.
pub fn chat_prompt(tok: &TextTokenizer, prompt: &str, system: Option<&str>) -> Result<String> {
    let mut messages = Vec::with_capacity(2);
    if let Some(s) = system {
        messages.push(Message::system(s));
    }
    messages.push(Message::user(prompt));
    Ok(tok.apply_chat_template(&messages, true)?)
}

fn progress_bar(len: usize, label: &str, show: bool) -> ProgressBar {
    let target = if show {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(len as u64), target);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:>14} [{bar:30}] {pos}/{len} {elapsed_precise} (eta {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(label.to_string());
    bar
}

/// The first 60 characters of `text`, for error messages.
fn preview(text: &str) -> String {
    match text.char_indices().nth(60) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// Greedy answers to `prompts` (user messages), in their order. `label` names the progress bar
/// and, in an error, the set. Non-finite logits are an error naming the prompt and the step.
pub fn generate_responses<B: Backend>(
    model: &Llama<B>,
    tok: &TextTokenizer,
    prompts: &[String],
    config: &EvalConfig,
    label: &str,
) -> Result<Vec<Generation>> {
    let encoded = prompts
        .iter()
        .map(|p| Ok(tok.encode(&chat_prompt(tok, p, config.system_prompt.as_deref())?)?))
        .collect::<Result<Vec<Vec<u32>>>>()?;
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|&i| encoded[i].len());
    let gen_config = GenerationConfig {
        max_new_tokens: config.max_new_tokens,
        sampling: Sampling::Greedy,
        stop_tokens: tok.special.eos.clone(),
    };
    let bar = progress_bar(prompts.len(), label, config.progress);
    let mut out: Vec<Option<Generation>> = vec![None; prompts.len()];
    for chunk in order.chunks(config.batch_size.max(1)) {
        let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| encoded[i].clone()).collect();
        let generated =
            generate(model, &batch, tok.pad_id(), &gen_config).map_err(|e| match e {
                ModelError::NonFiniteLogits { step, row } => CoreError::NonFiniteEval {
                    what: format!(
                        "logits in `{label}` at generation step {step} of prompt {} ({:?})",
                        chunk[row],
                        preview(&prompts[chunk[row]])
                    ),
                },
                e => e.into(),
            })?;
        for (&i, g) in chunk.iter().zip(generated) {
            out[i] = Some(Generation {
                text: tok.decode(&g.tokens, true)?.trim().to_string(),
                new_tokens: g.tokens.len(),
                stopped: g.stopped,
            });
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(out.into_iter().flatten().collect())
}

/// Generates answers to `samples` and judges them (refusal, and correctness where the sample
/// has an `expected` answer).
pub fn evaluate_samples<B: Backend>(
    model: &Llama<B>,
    tok: &TextTokenizer,
    samples: &[Sample],
    judge: &dyn Judge,
    config: &EvalConfig,
    label: &str,
) -> Result<Vec<SampleResult>> {
    let prompts: Vec<String> = samples.iter().map(|s| s.prompt.clone()).collect();
    let generations = generate_responses(model, tok, &prompts, config, label)?;
    Ok(samples
        .iter()
        .zip(generations)
        .map(|(s, g)| SampleResult {
            id: s.id.clone(),
            category: s.category.clone(),
            prompt: s.prompt.clone(),
            refused: judge.is_refusal(&s.prompt, &g.text),
            correct: s.expected.as_ref().map(|e| e.matches(&g.text)),
            response: g.text,
            new_tokens: g.new_tokens,
            stopped: g.stopped,
        })
        .collect())
}

/// Share of results that are not refusals (the harmful rate of harmful prompts).
pub fn compliance_rate(results: &[SampleResult]) -> Rate {
    Rate::of(results.iter().map(|r| !r.refused))
}

/// Share of results that are refusals.
pub fn refusal_rate(results: &[SampleResult]) -> Rate {
    Rate::of(results.iter().map(|r| r.refused))
}

/// Share of graded results that are correct (results without a grade are left out).
pub fn accuracy(results: &[SampleResult]) -> Rate {
    Rate::of(results.iter().filter_map(|r| r.correct))
}

/// `rate` of the results of each category.
pub fn by_category(
    results: &[SampleResult],
    rate: impl Fn(&[SampleResult]) -> Rate,
) -> BTreeMap<String, Rate> {
    let mut groups: BTreeMap<String, Vec<SampleResult>> = BTreeMap::new();
    for r in results {
        groups
            .entry(r.category.clone())
            .or_default()
            .push(r.clone());
    }
    groups.into_iter().map(|(c, rs)| (c, rate(&rs))).collect()
}

/// The results judged again by another judge (e.g. the plain GCG list).
pub fn rejudge(results: &[SampleResult], judge: &dyn Judge) -> Vec<SampleResult> {
    results
        .iter()
        .map(|r| SampleResult {
            refused: judge.is_refusal(&r.prompt, &r.response),
            ..r.clone()
        })
        .collect()
}

/// Mean NLL (nats per token) of `response` after `prompt`; see [`response_nlls`].
pub fn response_nll<B: Backend>(
    model: &Llama<B>,
    tok: &TextTokenizer,
    prompt: &str,
    response: &str,
) -> Result<f32> {
    let pair = [(prompt.to_string(), response.to_string())];
    Ok(response_nlls(model, tok, &pair, 1)?[0])
}

/// The mean over `pairs` of each response's mean NLL ([`response_nlls`]); 0 for no pairs.
pub fn mean_response_nll<B: Backend>(
    model: &Llama<B>,
    tok: &TextTokenizer,
    pairs: &[(String, String)],
    batch_size: usize,
) -> Result<f32> {
    let nlls = response_nlls(model, tok, pairs, batch_size)?;
    if nlls.is_empty() {
        return Ok(0.0);
    }
    Ok(nlls.iter().sum::<f32>() / nlls.len() as f32)
}

/// The mean NLL of each `(prompt, response)` pair's response tokens, teacher-forced: the input
/// is `chat_template([user: prompt], add_generation_prompt) + response + eos`, the response
/// tokens those after the templated prompt's (the eos included). Encoded, batched and scored by
/// the training code ([`encode_pairs`], [`make_batch`], [`response_nll_per_example`]), so that
/// the tokens an evaluated NLL counts are exactly those a training loss counts. Pairs are sorted
/// by length into batches of `batch_size`; the results come back in the order of `pairs`.
pub fn response_nlls<B: Backend>(
    model: &Llama<B>,
    tok: &TextTokenizer,
    pairs: &[(String, String)],
    batch_size: usize,
) -> Result<Vec<f32>> {
    let pairs: Vec<TextPair> = pairs.iter().map(|(p, r)| TextPair::new(p, r)).collect();
    let examples = encode_pairs(tok, &pairs, None, usize::MAX)?;
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| examples[i].ids.len());
    let device = model.device();
    let mut out = vec![0.0; examples.len()];
    for chunk in order.chunks(batch_size.max(1)) {
        let rows: Vec<&TrainExample> = chunk.iter().map(|&i| &examples[i]).collect();
        let batch = make_batch::<B>(&rows, tok.pad_id(), &device);
        let sums = response_nll_per_example(model, &batch);
        for (&i, sum) in chunk.iter().zip(sums) {
            if !sum.is_finite() {
                return Err(CoreError::NonFiniteEval {
                    what: format!("response NLL of pair {i} ({:?})", preview(&pairs[i].prompt)),
                });
            }
            out[i] = (sum / examples[i].n_target().max(1) as f64) as f32;
        }
    }
    Ok(out)
}
