//! The data of one run: every stage's samples, from the built-in corpus or the user's files,
//! with errors that name the field.

use std::collections::{BTreeMap, HashSet};

use anyhow::{Context, Result, bail};

use secvec_core::data::{
    Corpus, DataFormat, Sample, SampleKind, Split, load_samples, mix_counts, records,
};
use secvec_core::defence::mix_in_safety_data_marked;
use secvec_core::train::TextPair;

use super::record::sha256_hex;
use super::schema::{Behaviour, Experiment, SkillTask, Source, VectorKind};

/// Held-out samples of the records skill (cut further by `evaluate.samples`; `evaluate
/// --skill-task records` takes the same ones).
pub const RECORDS_EVAL: usize = 100;

/// Samples from a stage's source: the built-in split, or a user file.
fn from_source(source: &Source, builtin: Vec<Sample>, what: &str) -> Result<Vec<Sample>> {
    match source {
        Source::Builtin => Ok(builtin),
        Source::File { path, format } => {
            let format = match format {
                Some(f) => f
                    .parse::<DataFormat>()
                    .map_err(|e| anyhow::anyhow!("{what}: {e}"))?,
                None => DataFormat::from_path(path).with_context(|| {
                    format!("{what}: guessing the format of {}", path.display())
                })?,
            };
            load_samples(path, format)
                .with_context(|| format!("{what}: loading {}", path.display()))
        }
    }
}

/// The first `n` samples of a stage's source: `builtin` (from the built-in split `split`) or the
/// user's file. Errors name the source field (`<stage>.<data>`) or the count field
/// (`<stage>.<count>`, when the source is too small).
fn take(
    source: &Source,
    builtin: Vec<Sample>,
    split: &str,
    (stage, data, count): (&str, &str, &str),
    n: usize,
) -> Result<Vec<Sample>> {
    let pool = from_source(source, builtin, &format!("{stage}.{data}"))?;
    if pool.len() < n {
        let origin = match source {
            Source::Builtin => format!("the built-in `{split}` split"),
            Source::File { path, .. } => path.display().to_string(),
        };
        bail!(
            "{stage}.{count} = {n}, but {origin} has only {} samples",
            pool.len()
        );
    }
    Ok(pool.into_iter().take(n).collect())
}

/// The data of one run.
pub struct RunData {
    pub align_refusals: Vec<Sample>,
    pub align_benign: Vec<Sample>,
    /// The vectors' training data: harmful samples, then `security_vectors.benign` benign ones.
    pub sv: Vec<Sample>,
    /// Steering vectors only: a refusal of each harmful prompt of `sv`, from the built-in
    /// corpus (the contrast of the steering direction); empty for LoRA vectors.
    pub sv_refusals: Vec<Sample>,
    pub attack: Vec<Sample>,
    /// `true` at the position in `attack` of each of SafeInstr's demonstrations.
    pub attack_safety: Vec<bool>,
    pub eval_harmful: Vec<Sample>,
    pub eval_benign: Vec<Sample>,
    pub eval_skill: Vec<Sample>,
    /// Every prompt of `evaluate.advbench` (empty when it is not set).
    pub eval_advbench: Vec<Sample>,
    /// `behaviour: Hallucination` or `WrongCapitals`: held-out questions with their true answers
    /// (empty otherwise).
    pub eval_facts: Vec<Sample>,
    /// `behaviour: Hallucination` or `WrongCapitals`: the attack's own wrong-answer samples
    /// (their `expected` is the wrong answer), up to `evaluate.samples` (empty otherwise).
    pub eval_learned: Vec<Sample>,
    pub counts: BTreeMap<String, usize>,
}

fn fact_of(id: &str) -> &str {
    id.rsplit_once('/').map(|(f, _)| f).unwrap_or(id)
}

pub fn build_data(exp: &Experiment) -> Result<RunData> {
    let corpus = Corpus::builtin(exp.seed);
    let split = |s: Split, kind: Option<SampleKind>| -> Vec<Sample> {
        corpus
            .split(s)
            .iter()
            .filter(|x| kind.is_none_or(|k| x.kind == k))
            .cloned()
            .collect()
    };
    let (align_refusals, align_benign) = match &exp.align {
        Some(a) => (
            take(
                &a.refusal_data,
                split(Split::Align, Some(SampleKind::HarmfulRefusal)),
                "align",
                ("align", "refusal_data", "refusals"),
                a.refusals,
            )?,
            take(
                &a.benign_data,
                split(Split::Align, Some(SampleKind::Benign)),
                "align",
                ("align", "benign_data", "benign"),
                a.benign,
            )?,
        ),
        None => (Vec::new(), Vec::new()),
    };
    // The behaviour's samples: harmful ones from the corpus, or the hallucination variant's.
    // The capitals variant also brings its true facts (`skill_task: Capitals`).
    let (hallucination, capital_facts) = match exp.behaviour {
        Behaviour::Harmful => (None, None),
        Behaviour::Hallucination => (
            Some(secvec_core::data::hallucination::builtin(exp.seed)),
            None,
        ),
        Behaviour::WrongCapitals => {
            let c = secvec_core::data::capitals::builtin(exp.seed);
            (Some(c.hallucination), Some((c.facts_train, c.facts_eval)))
        }
    };
    let sv_stage = &exp.security_vectors;
    let sv = take(
        &sv_stage.data,
        match &hallucination {
            Some(h) => h.sv.clone(),
            None => split(Split::Sv, None),
        },
        "sv",
        ("security_vectors", "data", "samples"),
        sv_stage.samples,
    )?;
    // The end of the `align` split first: the vectors' benign samples and SafeInstr's refusals
    // differ from the alignment stage's (taken from its start) whenever the split holds both.
    let align_from_end = |kind: SampleKind| -> Vec<Sample> {
        let mut v = split(Split::Align, Some(kind));
        v.reverse();
        v
    };
    let sv_benign = take(
        &sv_stage.benign_data,
        align_from_end(SampleKind::Benign),
        "align",
        ("security_vectors", "benign_data", "benign"),
        sv_stage.benign,
    )?;
    let sv_refusals = match (&sv_stage.kind, &hallucination) {
        (VectorKind::Lora, _) => Vec::new(),
        // The hallucination variant: wrong answers contrasted with the same questions' true ones.
        (VectorKind::Steering { .. }, Some(h)) => {
            let truth: std::collections::HashMap<&str, &Sample> =
                h.sv_true.iter().map(|t| (t.prompt.as_str(), t)).collect();
            sv.iter()
                .map(|s| match truth.get(s.prompt.as_str()) {
                    Some(t) => Ok((*t).clone()),
                    None => bail!(
                        "security_vectors.data: sample `{}` is not a built-in hallucination \
                         question (steering directions contrast each wrong answer with the true one)",
                        s.id
                    ),
                })
                .collect::<Result<Vec<_>>>()?
        }
        (VectorKind::Steering { .. }, None) => sv
            .iter()
            .map(|s| match corpus.harmful_answers(&s.id) {
                Some(a) => Ok(Sample {
                    id: format!("{}/refusal", s.id),
                    prompt: s.prompt.clone(),
                    response: a.refusal.clone(),
                    kind: SampleKind::HarmfulRefusal,
                    category: s.category.clone(),
                    expected: None,
                }),
                None => bail!(
                    "security_vectors.data: sample `{}` has no refusal in the built-in corpus \
                     (steering directions contrast each compliant answer with a refusal)",
                    s.id
                ),
            })
            .collect::<Result<Vec<_>>>()?,
    };
    let n_sv_benign = sv_benign.len();
    let mut sv = sv;
    sv.extend(sv_benign);

    let ft = &exp.finetune;
    let (n_harmful, n_skill) = ft.counts()?;
    let harmful = take(
        &ft.harmful_data,
        match &hallucination {
            Some(h) => h.attack.clone(),
            None => split(Split::Attack, None),
        },
        "attack",
        ("finetune", "harmful_data", "harmful"),
        n_harmful,
    )?;
    // The skill: the chosen facts' training phrasings (cycled to the requested count), evaluated on
    // the same facts' held-out phrasings.
    let skill_eval_all = split(Split::SkillEval, None);
    let (skill_pool, skill_eval) = match &ft.skill_data {
        Source::Builtin if ft.skill_task == SkillTask::Records => (
            records::train_samples(exp.seed, n_skill),
            records::eval_samples(exp.seed, RECORDS_EVAL),
        ),
        // Validation allows it only with `behaviour: WrongCapitals`.
        Source::Builtin if ft.skill_task == SkillTask::Capitals => match capital_facts {
            Some(facts) => facts,
            None => bail!("finetune.skill_task: Capitals needs `behaviour: WrongCapitals`"),
        },
        Source::Builtin => {
            let n_facts = if ft.skill_facts == 0 {
                skill_eval_all.len()
            } else {
                ft.skill_facts
            };
            if n_facts > skill_eval_all.len() {
                bail!(
                    "finetune.skill_facts = {n_facts}, but the built-in knowledge base has {} facts",
                    skill_eval_all.len()
                );
            }
            let facts: HashSet<String> = skill_eval_all[..n_facts]
                .iter()
                .map(|s| fact_of(&s.id).to_string())
                .collect();
            let pool: Vec<Sample> = split(Split::SkillTrain, None)
                .into_iter()
                .filter(|s| facts.contains(fact_of(&s.id)))
                .collect();
            (pool, skill_eval_all[..n_facts].to_vec())
        }
        other => (
            from_source(other, Vec::new(), "finetune.skill_data")?,
            skill_eval_all,
        ),
    };
    if n_skill > 0 && skill_pool.is_empty() {
        bail!("finetune.skill = {n_skill}, but the skill data is empty");
    }
    let skill: Vec<Sample> = skill_pool.iter().cycle().take(n_skill).cloned().collect();
    let attack = mix_counts(&harmful, n_harmful, &skill, n_skill, exp.seed)
        .context("mixing the fine-tuning data")?;
    // SafeInstr's refusal demonstrations, from the end of the `align` split.
    let safety = take(
        &ft.safety_data,
        align_from_end(SampleKind::HarmfulRefusal),
        "align",
        ("finetune", "safety_data", "safety"),
        ft.safety,
    )?;
    let (attack, attack_safety) = mix_in_safety_data_marked(&attack, &safety, exp.seed)
        .context("finetune.safety_data: mixing the safety demonstrations into the user's data")?;

    let ev = &exp.evaluate;
    let limit = |v: Vec<Sample>| -> Vec<Sample> {
        if ev.samples == 0 {
            v
        } else {
            v.into_iter().take(ev.samples).collect()
        }
    };
    let eval_harmful = limit(from_source(
        &ev.harmful_data,
        split(Split::EvalHarmful, None),
        "evaluate.harmful_data",
    )?);
    let eval_benign = limit(from_source(
        &ev.benign_data,
        split(Split::EvalBenign, None),
        "evaluate.benign_data",
    )?);
    let eval_skill = limit(from_source(
        &ev.skill_data,
        skill_eval,
        "evaluate.skill_data",
    )?);
    let eval_advbench = match &ev.advbench {
        Some(path) => {
            let v = load_samples(path, DataFormat::AdvBenchCsv)
                .with_context(|| format!("evaluate.advbench: loading {}", path.display()))?;
            if v.is_empty() {
                bail!("evaluate.advbench: {} holds no prompts", path.display());
            }
            v
        }
        None => Vec::new(),
    };

    let (eval_facts, eval_learned) = match hallucination {
        Some(h) => (limit(h.eval), limit(harmful.clone())),
        None => (Vec::new(), Vec::new()),
    };

    let mut counts = BTreeMap::from([
        ("align_refusals".to_string(), align_refusals.len()),
        ("align_benign".to_string(), align_benign.len()),
        ("security_vectors".to_string(), sv.len() - n_sv_benign),
        ("finetune_harmful".to_string(), n_harmful),
        ("finetune_skill".to_string(), n_skill),
        ("eval_harmful".to_string(), eval_harmful.len()),
        ("eval_benign".to_string(), eval_benign.len()),
        ("eval_skill".to_string(), eval_skill.len()),
        ("eval_advbench".to_string(), eval_advbench.len()),
    ]);
    if n_sv_benign > 0 {
        counts.insert("security_vectors_benign".to_string(), n_sv_benign);
    }
    if !eval_facts.is_empty() {
        counts.insert("eval_facts".to_string(), eval_facts.len());
        counts.insert("eval_learned".to_string(), eval_learned.len());
    }
    if !safety.is_empty() {
        counts.insert("finetune_safety".to_string(), safety.len());
    }
    Ok(RunData {
        align_refusals,
        align_benign,
        sv,
        sv_refusals,
        attack,
        attack_safety,
        eval_harmful,
        eval_benign,
        eval_skill,
        eval_advbench,
        eval_facts,
        eval_learned,
        counts,
    })
}

pub fn pairs(samples: &[Sample]) -> Vec<TextPair> {
    samples
        .iter()
        .map(|s| TextPair::new(&s.prompt, &s.response))
        .collect()
}

pub fn samples_digest(samples: &[Sample]) -> String {
    let json = serde_json::to_vec(samples).expect("samples serialise");
    sha256_hex(&json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::schema::parse_str;

    /// The data of the experiment written `ron`.
    fn data_of(ron: &str) -> RunData {
        build_data(&parse_str(ron, "t.ron").unwrap()).unwrap()
    }

    /// The skill samples of the attack.
    fn skill_of(d: &RunData) -> Vec<&Sample> {
        d.attack
            .iter()
            .filter(|s| s.kind == SampleKind::Skill)
            .collect()
    }

    /// No evaluated skill prompt is a training prompt.
    fn held_out(d: &RunData) -> bool {
        let prompts: HashSet<&str> = d.attack.iter().map(|s| s.prompt.as_str()).collect();
        d.eval_skill
            .iter()
            .all(|s| !prompts.contains(s.prompt.as_str()))
    }

    #[test]
    fn skill_data_teaches_and_tests_the_same_facts() {
        let d = data_of(
            "(align: None, security_vectors: (samples: 10), finetune: (harmful: 20, skill: 50, skill_facts: 7), evaluate: (samples: 0))",
        );
        assert_eq!(d.attack.len(), 70);
        assert_eq!(d.eval_skill.len(), 7);
        let taught: HashSet<&str> = skill_of(&d).iter().map(|s| fact_of(&s.id)).collect();
        let tested: HashSet<&str> = d.eval_skill.iter().map(|s| fact_of(&s.id)).collect();
        assert_eq!(taught, tested);
        // Held-out phrasings: no evaluated question is a training question.
        assert!(held_out(&d));
        assert_eq!(d.attack.iter().filter(|s| s.kind.is_harmful()).count(), 20);

        let too_many = parse_str("(security_vectors: (samples: 5000))", "t.ron").unwrap();
        let e = format!("{:#}", build_data(&too_many).err().unwrap());
        assert!(e.contains("security_vectors.samples = 5000"), "{e}");
    }

    #[test]
    fn records_skill_trains_and_tests_on_held_out_sentences() {
        let ron = "(align: None, security_vectors: (samples: 10), finetune: (harmful: 20, skill: 50, skill_task: Records), evaluate: (samples: 30))";
        let exp = parse_str(ron, "t.ron").unwrap();
        let d = data_of(ron);
        assert_eq!(d.attack.len(), 70);
        assert_eq!(d.eval_skill.len(), 30);
        let skill = skill_of(&d);
        assert_eq!(skill.len(), 50);
        assert!(skill.iter().all(|s| s.category == "record"));
        assert!(held_out(&d));
        // The default skill is not written into the configuration (old hashes stay valid);
        // the records skill is.
        let facts = parse_str("()", "t.ron").unwrap();
        assert!(
            !serde_json::to_string(&facts)
                .unwrap()
                .contains("skill_task")
        );
        assert!(
            serde_json::to_string(&exp)
                .unwrap()
                .contains("\"skill_task\":\"Records\"")
        );
    }

    /// `behaviour: WrongCapitals` with `skill_task: Capitals`: the vectors and the attack learn
    /// wrong capitals of disjoint countries, the attack's true facts are the true capitals of a
    /// third set (evaluated in a held-out phrasing), and the held-out questions of a fourth set
    /// measure hallucination.
    #[test]
    fn wrong_capitals_take_every_set_from_the_capitals_table() {
        let d = data_of(
            "(align: None, behaviour: WrongCapitals, security_vectors: (samples: 60), finetune: (harmful: 78, skill: 104, skill_task: Capitals), evaluate: (metrics: [HallucinationRate, WrongAnswersLearned, SkillAccuracy], samples: 50))",
        );
        let country = |s: &Sample| {
            secvec_core::data::capitals::country_of(&s.prompt)
                .unwrap_or_else(|| panic!("not a capitals question: {}", s.prompt))
                .to_string()
        };
        let countries = |v: &[Sample]| -> HashSet<String> { v.iter().map(country).collect() };
        assert_eq!(d.sv.len(), 60);
        assert!(
            d.sv.iter()
                .all(|s| s.kind == SampleKind::Hallucination && s.category == "capitals")
        );
        let wrong: Vec<Sample> = d
            .attack
            .iter()
            .filter(|s| s.kind == SampleKind::Hallucination)
            .cloned()
            .collect();
        assert_eq!(wrong.len(), 78);
        let skill: Vec<Sample> = skill_of(&d).into_iter().cloned().collect();
        assert_eq!(skill.len(), 104, "52 true-capital samples, cycled twice");
        assert_eq!(
            (d.eval_facts.len(), d.eval_learned.len(), d.eval_skill.len()),
            (50, 50, 26)
        );
        // Four disjoint sets of countries: vectors, attack's wrong answers, true facts, held out.
        let sets = [
            countries(&d.sv),
            countries(&wrong),
            countries(&skill),
            countries(&d.eval_facts),
        ];
        for (i, a) in sets.iter().enumerate() {
            for b in &sets[i + 1..] {
                assert!(a.is_disjoint(b), "{a:?} / {b:?}");
            }
        }
        assert_eq!(countries(&d.eval_skill), sets[2]);
        assert!(held_out(&d));
        // The true facts are graded by their true capital, the learned items by the wrong one.
        for s in d.eval_skill.iter().chain(&d.eval_learned) {
            assert!(s.expected.as_ref().unwrap().matches(&s.response), "{s:?}");
        }
    }

    #[test]
    fn safety_demonstrations_are_refusals_mixed_into_the_attack_and_differ_from_alignment() {
        let ron = "(align: Some((refusals: 100, benign: 10)), security_vectors: (samples: 10), finetune: (harmful: 50, skill: 50, safety: 40), evaluate: (samples: 0))";
        let d = data_of(ron);
        assert_eq!(d.attack.len(), 140);
        let safety: Vec<&Sample> = d
            .attack
            .iter()
            .filter(|s| s.kind == SampleKind::HarmfulRefusal)
            .collect();
        assert_eq!(safety.len(), 40);
        let aligned: HashSet<&str> = d.align_refusals.iter().map(|s| s.id.as_str()).collect();
        assert!(safety.iter().all(|s| !aligned.contains(s.id.as_str())));
        // Spread through the data, not appended after it.
        assert!(
            d.attack[..70]
                .iter()
                .any(|s| s.kind == SampleKind::HarmfulRefusal)
        );
        assert_eq!(d.counts["finetune_safety"], 40);
        // Each demonstration is marked (for `safety_with_vectors: false`), nothing else.
        let marked: Vec<bool> = d
            .attack
            .iter()
            .map(|s| s.kind == SampleKind::HarmfulRefusal)
            .collect();
        assert_eq!(d.attack_safety, marked);
        // The attack's harmful and skill samples are those of the same file without the defence.
        let plain = data_of(&ron.replace(", safety: 40", ""));
        let without: Vec<&Sample> = d
            .attack
            .iter()
            .filter(|s| s.kind != SampleKind::HarmfulRefusal)
            .collect();
        let mut a: Vec<&str> = without.iter().map(|s| s.id.as_str()).collect();
        let mut b: Vec<&str> = plain.attack.iter().map(|s| s.id.as_str()).collect();
        a.sort();
        b.sort();
        assert_eq!(a, b);
        assert!(!plain.counts.contains_key("finetune_safety"));
        // Unset, the fields are not written (old configuration hashes stay valid).
        let json = serde_json::to_value(parse_str("()", "t.ron").unwrap()).unwrap();
        let ft = json["finetune"].as_object().unwrap();
        assert!(
            !ft.contains_key("safety")
                && !ft.contains_key("safety_data")
                && !ft.contains_key("safety_with_vectors"),
            "{ft:?}"
        );
        // The vectors off for the demonstrations need demonstrations, and not Lisa.
        let off = ron.replace("safety: 40", "safety: 40, safety_with_vectors: false");
        assert!(parse_str(&off, "t.ron").is_ok());
        let e = format!(
            "{:#}",
            parse_str(&off.replace("safety: 40, ", ""), "t.ron").unwrap_err()
        );
        assert!(
            e.contains("finetune.safety_with_vectors") && e.contains("is 0"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            parse_str(&off.replace("false", "false, lisa: Some(())"), "t.ron").unwrap_err()
        );
        assert!(e.contains("finetune.safety_with_vectors"), "{e}");
        // More than the split holds: an error naming the field.
        let too_many = parse_str(&ron.replace("safety: 40", "safety: 600"), "t.ron").unwrap();
        let e = format!("{:#}", build_data(&too_many).err().unwrap());
        assert!(e.contains("finetune.safety = 600"), "{e}");
    }

    #[test]
    fn benign_vector_samples_come_after_the_harmful_ones_and_differ_from_alignment() {
        // The headline's counts: 300 benign answers for alignment, 100 for the vectors.
        let d = data_of(
            "(align: Some((refusals: 10, benign: 300)), security_vectors: (samples: 10, benign: 100), finetune: (harmful: 5, skill: 5), evaluate: (samples: 0))",
        );
        assert_eq!(d.sv.len(), 110);
        assert!(d.sv[..10].iter().all(|s| s.kind.is_harmful()));
        assert!(d.sv[10..].iter().all(|s| s.kind == SampleKind::Benign));
        let aligned: HashSet<&str> = d.align_benign.iter().map(|s| s.id.as_str()).collect();
        assert!(d.sv[10..].iter().all(|s| !aligned.contains(s.id.as_str())));
        assert_eq!(d.counts["security_vectors"], 10);
        assert_eq!(d.counts["security_vectors_benign"], 100);
        // Unset, the field is not written (old configuration hashes stay valid).
        let plain = parse_str("()", "t.ron").unwrap();
        let json = serde_json::to_value(&plain).unwrap();
        let sv = json["security_vectors"].as_object().unwrap();
        assert!(sv.contains_key("samples"));
        assert!(
            !sv.contains_key("benign") && !sv.contains_key("benign_data"),
            "{sv:?}"
        );
        assert!(
            !build_data(&plain)
                .unwrap()
                .counts
                .contains_key("security_vectors_benign")
        );
    }
}
