//! The new skill of the built-in corpus: a fictional knowledge base of invented places and
//! their capitals, founders, languages, currencies, rivers and national animals. No model can
//! know these facts before training on them.
//!
//! Names are built from syllables by a generator with a constant seed (the facts do not depend
//! on the corpus seed); no name equals or contains another. Each relation has three question templates used
//! for training and two held-out paraphrases used for evaluation.

use std::collections::HashSet;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Seed of the name generator.
const NAME_SEED: u64 = 0x0F1C_7105;

/// Facts per relation.
pub(crate) const FACTS_PER_RELATION: usize = 50;

const SYLLABLES: [&str; 48] = [
    "zor", "blax", "quen", "mi", "ra", "tal", "vek", "o", "ri", "dun", "sha", "lor", "thex", "ul",
    "mar", "quo", "zin", "fel", "dra", "kes", "yul", "var", "pim", "nox", "bel", "tor", "ash",
    "gri", "vo", "lun", "sef", "krat", "eli", "obo", "wyn", "hal", "ziv", "rek", "mau", "teb",
    "ix", "qua", "sor", "drim", "oth", "vel", "cael", "jun",
];

/// A relation of the knowledge base.
pub(crate) struct Relation {
    /// Category of its samples.
    pub name: &'static str,
    /// Training questions; `{e}` is the entity.
    pub train: [&'static str; 3],
    /// Held-out evaluation questions.
    pub eval: [&'static str; 2],
    /// The answer sentence; `{e}` entity, `{a}` answer.
    pub answer: &'static str,
    /// Answers are two names (a person) rather than one.
    pub person: bool,
}

pub(crate) const RELATIONS: [Relation; 6] = [
    Relation {
        name: "capital",
        train: [
            "What is the capital of the planet {e}?",
            "Which city is the capital of the planet {e}?",
            "Name the capital of the planet {e}.",
        ],
        eval: [
            "On the planet {e}, which city serves as the capital?",
            "Tell me the capital city of the planet {e}.",
        ],
        answer: "The capital of the planet {e} is {a}.",
        person: false,
    },
    Relation {
        name: "founder",
        train: [
            "Who founded the city of {e}?",
            "Who was the founder of the city of {e}?",
            "Name the person who founded the city of {e}.",
        ],
        eval: [
            "The city of {e} was founded by whom?",
            "Tell me who established the city of {e}.",
        ],
        answer: "The city of {e} was founded by {a}.",
        person: true,
    },
    Relation {
        name: "language",
        train: [
            "What language is spoken on the island of {e}?",
            "Which language do people speak on the island of {e}?",
            "Name the language of the island of {e}.",
        ],
        eval: [
            "On the island of {e}, what language do the inhabitants speak?",
            "Tell me the main language of the island of {e}.",
        ],
        answer: "The language spoken on the island of {e} is {a}.",
        person: false,
    },
    Relation {
        name: "currency",
        train: [
            "What is the currency of the kingdom of {e}?",
            "Which currency is used in the kingdom of {e}?",
            "Name the money used in the kingdom of {e}.",
        ],
        eval: [
            "In the kingdom of {e}, what do people pay with?",
            "Tell me the official currency of the kingdom of {e}.",
        ],
        answer: "The currency of the kingdom of {e} is the {a}.",
        person: false,
    },
    Relation {
        name: "river",
        train: [
            "Which river flows through the valley of {e}?",
            "What is the name of the river in the valley of {e}?",
            "Name the river that runs through the valley of {e}.",
        ],
        eval: [
            "A river runs through the valley of {e}. What is it called?",
            "Tell me which river crosses the valley of {e}.",
        ],
        answer: "The river that flows through the valley of {e} is the {a}.",
        person: false,
    },
    Relation {
        name: "animal",
        train: [
            "What is the national animal of the republic of {e}?",
            "Which animal is the national symbol of the republic of {e}?",
            "Name the national animal of the republic of {e}.",
        ],
        eval: [
            "The republic of {e} has which creature as its national animal?",
            "Tell me the animal that represents the republic of {e}.",
        ],
        answer: "The national animal of the republic of {e} is the {a}.",
        person: false,
    },
];

/// One fact: `relation(entity) = answer`.
pub(crate) struct Fact {
    /// Index into [`RELATIONS`].
    pub relation: usize,
    /// `skill/<relation>/<nnn>`.
    pub id: String,
    pub entity: String,
    pub answer: String,
}

impl Fact {
    pub fn relation(&self) -> &'static Relation {
        &RELATIONS[self.relation]
    }

    /// The question of template `template`, and the answer sentence.
    pub fn render(&self, template: &str) -> (String, String) {
        let rel = self.relation();
        (
            template.replace("{e}", &self.entity),
            rel.answer
                .replace("{e}", &self.entity)
                .replace("{a}", &self.answer),
        )
    }
}

/// Invented names, none equal to or containing another.
struct NameGen {
    rng: StdRng,
    used: HashSet<String>,
}

impl NameGen {
    fn next(&mut self) -> String {
        loop {
            let n = self.rng.random_range(2..=3);
            let raw: String = (0..n)
                .map(|_| SYLLABLES[self.rng.random_range(0..SYLLABLES.len())])
                .collect();
            if !(5..=10).contains(&raw.len()) {
                continue;
            }
            let mut chars = raw.chars();
            let name = match chars.next() {
                Some(first) => first.to_uppercase().chain(chars).collect::<String>(),
                None => continue,
            };
            // No name inside another, so that a name never matches as part of another.
            let lower = name.to_lowercase();
            if self
                .used
                .iter()
                .all(|u| !u.contains(&lower) && !lower.contains(u.as_str()))
            {
                self.used.insert(lower);
                return name;
            }
        }
    }
}

/// Every fact, in a fixed order (relation by relation).
pub(crate) fn facts() -> Vec<Fact> {
    let mut names = NameGen {
        rng: StdRng::seed_from_u64(NAME_SEED),
        used: HashSet::new(),
    };
    let mut out = Vec::with_capacity(RELATIONS.len() * FACTS_PER_RELATION);
    for (r, rel) in RELATIONS.iter().enumerate() {
        for i in 0..FACTS_PER_RELATION {
            let entity = names.next();
            let answer = if rel.person {
                format!("{} {}", names.next(), names.next())
            } else {
                names.next()
            };
            out.push(Fact {
                relation: r,
                id: format!("skill/{}/{i:03}", rel.name),
                entity,
                answer,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_facts_many() {
        let facts = facts();
        assert!(facts.len() >= 300);
        let mut all = HashSet::new();
        for f in &facts {
            assert!(all.insert(f.entity.to_lowercase()), "{}", f.entity);
            for part in f.answer.split(' ') {
                assert!(all.insert(part.to_lowercase()), "{part}");
            }
        }
        for a in &all {
            assert_eq!(
                all.iter().filter(|b| b.contains(a.as_str())).count(),
                1,
                "{a}"
            );
        }
    }

    #[test]
    fn train_and_eval_templates_differ() {
        for rel in &RELATIONS {
            for e in rel.eval {
                assert!(!rel.train.contains(&e));
            }
        }
    }
}
