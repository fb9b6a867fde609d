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

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::data::{DataError, Sample, SampleKind};
use crate::eval::KeywordJudge;

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
) -> Result<Vec<Sample>, DataError> {
    if safety.is_empty() {
        return Ok(user.to_vec());
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
    let mut out: Vec<Sample> = user.iter().chain(safety).cloned().collect();
    out.shuffle(&mut StdRng::seed_from_u64(seed ^ SHUFFLE_SEED_OFFSET));
    Ok(out)
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
