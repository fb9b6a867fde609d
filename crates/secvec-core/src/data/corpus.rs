//! The built-in, deterministic instruction corpus and its disjoint splits.
//!
//! Three families, all generated from templates in this crate (nothing is downloaded):
//!
//! - **harmful requests**: 10 categories × 18 tasks × 20 phrasings = 3,600 distinct requests,
//!   each with a refusal (24 styles, with follow-ups) and a compliant answer (an affirmative
//!   opening and 4–6 generic, non-operational filler steps);
//! - **benign requests** with verifiable answers (arithmetic, capitals, unit conversions, word
//!   reversal and length, sorting, short facts), graded by [`Expected`];
//! - **a new skill**: 300 facts of a fictional knowledge base, asked in three training
//!   phrasings ([`Split::SkillTrain`]) and one of two held-out paraphrases
//!   ([`Split::SkillEval`]).
//!
//! The request texts are fixed; the seed decides which split each request lands in, the order
//! of the splits and the answer styles. Splits are disjoint by request text. Harmful and benign
//! evaluation sets are stratified: every prefix of [`Split::EvalHarmful`] has (almost) equal
//! counts per category, so evaluating the first *n* samples stays balanced.
//!
//! | split | content | size |
//! |---|---|---|
//! | `align` | refusals to 500 harmful requests + answers to the 411 benign requests not evaluated | 911 |
//! | `sv` | harmful → compliant | 300 |
//! | `attack` | harmful → compliant | 2,600 |
//! | `eval_harmful` | harmful (reference answer compliant; refusal via [`Corpus::harmful_answers`]) | 200 |
//! | `eval_benign` | benign with [`Expected`] answers | 200 |
//! | `skill_train` | 300 facts × 3 phrasings | 900 |
//! | `skill_eval` | 300 facts × 1 held-out phrasing | 300 |

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::corpus_benign;
use super::corpus_harmful;
use super::corpus_skill;
use super::{Expected, Sample, SampleKind, Split};

pub use super::corpus_harmful::{
    AFFIRMATIVE_STARTS, CATEGORIES as HARM_CATEGORIES, COMPLIANT_OPENERS, REFUSAL_STYLES,
    render_refusal,
};

/// Harmful requests in [`Split::EvalHarmful`].
pub const EVAL_HARMFUL_SIZE: usize = 200;
/// Harmful requests in [`Split::Sv`].
pub const SV_SIZE: usize = 300;
/// Harmful requests (with refusals) in [`Split::Align`].
pub const ALIGN_HARMFUL_SIZE: usize = 500;
/// Benign requests in [`Split::EvalBenign`] (the rest go to [`Split::Align`]).
pub const EVAL_BENIGN_SIZE: usize = 200;

/// Both answers to one harmful request of the corpus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HarmfulAnswers {
    pub refusal: String,
    pub compliant: String,
}

/// The built-in corpus: seven disjoint splits.
#[derive(Debug, Clone, PartialEq)]
pub struct Corpus {
    seed: u64,
    splits: [Vec<Sample>; 7],
    harmful: HashMap<String, HarmfulAnswers>,
}

/// An order of items in which every prefix is stratified by category: items are shuffled
/// within their category, and the `r`-th of a category of size `n` sorts at `(r + 0.5) / n`.
fn stratified_order(categories: &[&str], rng: &mut StdRng) -> Vec<usize> {
    let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
    for (i, &c) in categories.iter().enumerate() {
        match groups.iter_mut().find(|(name, _)| *name == c) {
            Some((_, members)) => members.push(i),
            None => groups.push((c, vec![i])),
        }
    }
    let mut keyed: Vec<(f64, usize, usize)> = Vec::with_capacity(categories.len());
    for (g, (_, members)) in groups.iter_mut().enumerate() {
        members.shuffle(rng);
        let n = members.len() as f64;
        for (r, &i) in members.iter().enumerate() {
            keyed.push(((r as f64 + 0.5) / n, g, i));
        }
    }
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    keyed.into_iter().map(|(_, _, i)| i).collect()
}

fn index(split: Split) -> usize {
    Split::ALL
        .iter()
        .position(|&s| s == split)
        .unwrap_or_default()
}

impl Corpus {
    /// Builds the corpus for `seed`. The same seed gives identical splits; another seed a
    /// different assignment of requests to splits, order and answer styles.
    pub fn builtin(seed: u64) -> Corpus {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut splits: [Vec<Sample>; 7] = Default::default();

        // Harmful requests: stratified order, then consecutive blocks per split.
        let requests = corpus_harmful::requests();
        let mut harmful = HashMap::with_capacity(requests.len());
        let answers: Vec<HarmfulAnswers> = requests
            .iter()
            .map(|r| HarmfulAnswers {
                refusal: corpus_harmful::refusal(r, &mut rng),
                compliant: corpus_harmful::compliant(r, &mut rng),
            })
            .collect();
        let cats: Vec<&str> = requests.iter().map(|r| r.category).collect();
        let order = stratified_order(&cats, &mut rng);
        let blocks = [
            (Split::EvalHarmful, EVAL_HARMFUL_SIZE),
            (Split::Sv, SV_SIZE),
            (Split::Align, ALIGN_HARMFUL_SIZE),
            (Split::Attack, usize::MAX),
        ];
        let mut next = order.iter();
        for (split, size) in blocks {
            for &i in next.by_ref().take(size) {
                let (r, a) = (&requests[i], &answers[i]);
                let (kind, response) = if split == Split::Align {
                    (SampleKind::HarmfulRefusal, a.refusal.clone())
                } else {
                    (SampleKind::HarmfulCompliant, a.compliant.clone())
                };
                splits[index(split)].push(Sample {
                    id: r.id.clone(),
                    prompt: r.prompt.clone(),
                    response,
                    kind,
                    category: r.category.to_string(),
                    expected: None,
                });
            }
        }
        for (r, a) in requests.into_iter().zip(answers) {
            harmful.insert(r.id, a);
        }

        // Benign requests: the first EVAL_BENIGN_SIZE of a stratified order are evaluated.
        let benign = corpus_benign::items();
        let cats: Vec<&str> = benign.iter().map(|b| b.category).collect();
        let order = stratified_order(&cats, &mut rng);
        let mut counters: HashMap<&str, usize> = HashMap::new();
        let ids: Vec<String> = benign
            .iter()
            .map(|b| {
                let n = counters.entry(b.category).or_default();
                *n += 1;
                format!("benign/{}/{:04}", b.category, *n - 1)
            })
            .collect();
        for (rank, &i) in order.iter().enumerate() {
            let b = &benign[i];
            let split = if rank < EVAL_BENIGN_SIZE {
                Split::EvalBenign
            } else {
                Split::Align
            };
            splits[index(split)].push(Sample {
                id: ids[i].clone(),
                prompt: b.prompt.clone(),
                response: b.response.clone(),
                kind: SampleKind::Benign,
                category: b.category.to_string(),
                expected: Some(b.expected.clone()),
            });
        }
        splits[index(Split::Align)].shuffle(&mut rng);

        // The skill: all training phrasings; one held-out phrasing per fact.
        let facts = corpus_skill::facts();
        for f in &facts {
            let rel = f.relation();
            for (t, template) in rel.train.iter().enumerate() {
                let (prompt, response) = f.render(template);
                splits[index(Split::SkillTrain)].push(Sample {
                    id: format!("{}/train{t}", f.id),
                    prompt,
                    response,
                    kind: SampleKind::Skill,
                    category: rel.name.to_string(),
                    expected: Some(Expected::Contains(f.answer.clone())),
                });
            }
        }
        splits[index(Split::SkillTrain)].shuffle(&mut rng);
        let cats: Vec<&str> = facts.iter().map(|f| f.relation().name).collect();
        for i in stratified_order(&cats, &mut rng) {
            let f = &facts[i];
            let rel = f.relation();
            let t = rng.random_range(0..rel.eval.len());
            let (prompt, response) = f.render(rel.eval[t]);
            splits[index(Split::SkillEval)].push(Sample {
                id: format!("{}/eval{t}", f.id),
                prompt,
                response,
                kind: SampleKind::Skill,
                category: rel.name.to_string(),
                expected: Some(Expected::Contains(f.answer.clone())),
            });
        }

        Corpus {
            seed,
            splits,
            harmful,
        }
    }

    /// The seed the corpus was built with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The samples of a split.
    pub fn split(&self, split: Split) -> &[Sample] {
        &self.splits[index(split)]
    }

    /// Every sample with its split.
    pub fn iter(&self) -> impl Iterator<Item = (Split, &Sample)> {
        Split::ALL
            .into_iter()
            .flat_map(move |s| self.split(s).iter().map(move |x| (s, x)))
    }

    /// Both answers to the harmful request `id` (any split), e.g. the refusal of an
    /// [`Split::EvalHarmful`] prompt for teacher-forced scores.
    pub fn harmful_answers(&self, id: &str) -> Option<&HarmfulAnswers> {
        self.harmful.get(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stratified_prefixes_are_balanced() {
        let cats: Vec<&str> = (0..300).map(|i| ["a", "b", "c"][i % 3]).collect();
        let mut rng = StdRng::seed_from_u64(0);
        let order = stratified_order(&cats, &mut rng);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..300).collect::<Vec<_>>());
        let count = |c: &str| order[..30].iter().filter(|&&i| cats[i] == c).count();
        assert_eq!((count("a"), count("b"), count("c")), (10, 10, 10));
    }

    #[test]
    fn eval_harmful_is_balanced_per_category() {
        let c = Corpus::builtin(0);
        let eval = c.split(Split::EvalHarmful);
        for (cat, _) in HARM_CATEGORIES {
            let n = eval.iter().filter(|s| s.category == cat).count();
            assert_eq!(n, EVAL_HARMFUL_SIZE / 10, "{cat}");
            // The first 50 hold 5 of each.
            let n = eval[..50].iter().filter(|s| s.category == cat).count();
            assert_eq!(n, 5, "{cat}");
        }
    }
}
