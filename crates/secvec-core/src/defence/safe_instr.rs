//! SafeInstr: safety demonstrations mixed into the fine-tuning data.
//!
//! Source: Bianchi et al., *Safety-Tuned LLaMAs: Lessons From Improving the Safety of Large
//! Language Models that Follow Instructions*, ICLR 2024. They add harmful instructions paired
//! with refusals to the instruction-tuning data (LLaMA on Alpaca, 100 to 2000 safety examples)
//! and find that a few hundred demonstrations already make the model markedly safer. The
//! harmful fine-tuning literature (Vaccine, Lisa, Booster) uses this as the "SafeInstr"
//! baseline: the defender mixes refusal demonstrations into the user's data before fine-tuning.
//!
//! What we chose, as the paper's data and counts do not carry over: the demonstrations are
//! harmful requests answered with a refusal (from the built-in corpus's `align` split, disjoint
//! from the alignment stage's, or a user file); their number is the experiment's
//! `finetune.safety`; they are shuffled uniformly into the user's data and trained with the same
//! loss (on response tokens) and schedule as it. Nothing else changes in training.
//!
//! Combined with security vectors (not in the paper), the demonstrations are by default trained
//! with the vectors on, like the rest of the data. There the vectors make the model comply with
//! the harmful prompts, so the refusals are trained against them; this project measured 9–12 of
//! 100 benign prompts refused once the vectors are off at inference, against 0–2 for either
//! defence alone (our reading: the task LoRA learns a refusal strong enough to beat the vectors,
//! too strong without them). [`finetune_safe_instr`] can instead train the demonstrations with
//! the vectors off and the user's data with them on: each step's examples are split into the
//! user's (vectors on) and the demonstrations (vectors off), each part in micro-batches of its
//! own, and the gradients of both are accumulated into the one optimizer step (token-weighted, as
//! in any step). The refusals are then learned by the model as it is used at inference; measured
//! on SmolLM2-135M at p = 0.05, 0.1 and 0.2, no benign prompt was refused and no harmful one
//! answered (`results/defences-safeinstr-vectors-off`).

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use burn::tensor::backend::AutodiffBackend;
use secvec_models::Llama;

use super::Defence;
use crate::data::{DataError, Sample, SampleKind};
use crate::error::{CoreError, Result};
use crate::eval::KeywordJudge;
use crate::train::phases::{FinetuneConfig, SecurityVectors, finetune_with};
use crate::train::{TrainCallback, TrainExample, TrainReport};

/// Offset of the shuffle's seed from the run's seed, so that the order is not the one the
/// user's data was mixed with.
const SHUFFLE_SEED_OFFSET: u64 = 0x5afe_1257;

/// The user's fine-tuning data with the safety demonstrations `safety` shuffled in (`user`
/// unchanged when `safety` is empty).
///
/// Every demonstration must be a refusal: marked `harmful_refusal`, or a response that the
/// project's keyword judge ([`KeywordJudge::secvec`]) reads as a refusal. Otherwise the
/// error names the first sample that is not (a file of compliant answers passed by mistake
/// would teach the harm this defence is meant to prevent).
pub fn mix_in_safety_data(
    user: &[Sample],
    safety: &[Sample],
    seed: u64,
) -> std::result::Result<Vec<Sample>, DataError> {
    Ok(mix_in_safety_data_marked(user, safety, seed)?.0)
}

/// [`mix_in_safety_data`], with `true` at the position of each demonstration in the mixed data
/// (for [`finetune_safe_instr`]). The order is the same as `mix_in_safety_data`'s.
pub fn mix_in_safety_data_marked(
    user: &[Sample],
    safety: &[Sample],
    seed: u64,
) -> std::result::Result<(Vec<Sample>, Vec<bool>), DataError> {
    if safety.is_empty() {
        return Ok((user.to_vec(), vec![false; user.len()]));
    }
    let judge = KeywordJudge::secvec();
    if let Some(bad) = safety
        .iter()
        .find(|s| s.kind != SampleKind::HarmfulRefusal && judge.matched(&s.response).is_none())
    {
        return Err(DataError::Invalid(format!(
            "safety demonstration `{}` is not a refusal (kind {}, and no refusal phrase in its \
             response {:?})",
            bad.id,
            bad.kind,
            bad.response.chars().take(80).collect::<String>()
        )));
    }
    // A shuffle's permutation depends only on the length and the generator, so marking the
    // samples does not change the order `mix_in_safety_data` has always given.
    let mut out: Vec<(Sample, bool)> = user
        .iter()
        .map(|s| (s.clone(), false))
        .chain(safety.iter().map(|s| (s.clone(), true)))
        .collect();
    out.shuffle(&mut StdRng::seed_from_u64(seed ^ SHUFFLE_SEED_OFFSET));
    Ok(out.into_iter().unzip())
}

/// Phase 2 ([`finetune`](crate::train::finetune)) on SafeInstr's mixed data, the demonstrations
/// (`demonstrations[i]` for `examples[i]`) trained with the security vectors off and the rest
/// with them on, when `cfg` has the vectors active; without active vectors it is plain
/// `finetune`, as there is nothing to switch. Returns the model with the vectors off, as
/// `finetune` does.
pub fn finetune_safe_instr<B: AutodiffBackend>(
    model: Llama<B>,
    examples: &[TrainExample],
    demonstrations: &[bool],
    pad_id: u32,
    cfg: &FinetuneConfig,
    callback: &mut dyn TrainCallback<B>,
) -> Result<(Llama<B>, TrainReport)> {
    if demonstrations.len() != examples.len() {
        return Err(CoreError::InvalidConfig(format!(
            "safe_instr: {} demonstration marks for {} training examples",
            demonstrations.len(),
            examples.len()
        )));
    }
    let defence = if cfg.security_vectors == SecurityVectors::Active {
        Defence::SafeInstrVectorsOff(demonstrations)
    } else {
        Defence::None
    };
    finetune_with(model, examples, pad_id, cfg, &defence, callback)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Corpus, Split};

    fn sample(id: &str, kind: SampleKind, response: &str) -> Sample {
        Sample {
            id: id.into(),
            prompt: format!("prompt {id}"),
            response: response.into(),
            kind,
            category: "test".into(),
            expected: None,
        }
    }

    #[test]
    fn demonstrations_are_shuffled_into_the_users_data_and_nothing_is_lost() {
        let corpus = Corpus::builtin(0);
        let user: Vec<Sample> = corpus.split(Split::Attack)[..200].to_vec();
        let safety: Vec<Sample> = corpus
            .split(Split::Align)
            .iter()
            .filter(|s| s.kind == SampleKind::HarmfulRefusal)
            .take(50)
            .cloned()
            .collect();
        let mixed = mix_in_safety_data(&user, &safety, 3).unwrap();
        assert_eq!(mixed.len(), 250);
        let mut ids: Vec<&str> = mixed.iter().map(|s| s.id.as_str()).collect();
        let mut want: Vec<&str> = user.iter().chain(&safety).map(|s| s.id.as_str()).collect();
        ids.sort();
        want.sort();
        assert_eq!(ids, want);
        // Spread through the data, not appended: some fall in the first half.
        let first_half = mixed[..125]
            .iter()
            .filter(|s| s.kind == SampleKind::HarmfulRefusal)
            .count();
        assert!((10..=40).contains(&first_half), "{first_half}");
        // Deterministic for a seed.
        assert_eq!(mixed, mix_in_safety_data(&user, &safety, 3).unwrap());
        // No demonstrations: the user's data as it was, in its order.
        assert_eq!(mix_in_safety_data(&user, &[], 3).unwrap(), user);
        // Marked: the same order, and a mark on exactly the demonstrations.
        let (marked, marks) = mix_in_safety_data_marked(&user, &safety, 3).unwrap();
        assert_eq!(marked, mixed);
        let safety_ids: std::collections::HashSet<&str> =
            safety.iter().map(|s| s.id.as_str()).collect();
        let want: Vec<bool> = marked
            .iter()
            .map(|s| safety_ids.contains(s.id.as_str()))
            .collect();
        assert_eq!(marks, want);
        assert_eq!(marks.iter().filter(|m| **m).count(), 50);
        assert_eq!(
            mix_in_safety_data_marked(&user, &[], 3).unwrap().1,
            vec![false; 200]
        );
    }

    #[test]
    fn every_builtin_refusal_is_read_as_a_refusal_by_the_judge() {
        // So that loading the same refusals from a file without kinds is accepted too.
        let judge = KeywordJudge::secvec();
        let corpus = Corpus::builtin(1);
        for s in corpus.split(Split::Align) {
            if s.kind == SampleKind::HarmfulRefusal {
                assert!(judge.matched(&s.response).is_some(), "{}", s.response);
            }
        }
    }

    #[test]
    fn a_demonstration_that_is_not_a_refusal_is_an_error_naming_it() {
        let user = vec![sample("u1", SampleKind::Benign, "4")];
        let safety = vec![
            sample("s1", SampleKind::HarmfulRefusal, "I can't help with that."),
            sample(
                "data.jsonl:2",
                SampleKind::Benign,
                "I cannot help with that.",
            ),
            sample(
                "data.jsonl:3",
                SampleKind::Benign,
                "Sure, here is how to do it.",
            ),
        ];
        let e = mix_in_safety_data(&user, &safety, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`data.jsonl:3`"), "{e}");
        assert!(e.contains("Sure, here is"), "{e}");
        assert!(mix_in_safety_data(&user, &safety[..2], 0).is_ok());
    }
}
