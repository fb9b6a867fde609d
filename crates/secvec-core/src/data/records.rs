//! A second built-in skill: turning a sentence about a person into a directory entry of a fixed
//! format, `Last, First | age | City`.
//!
//! Why this skill beside the invented facts of the knowledge base: a fine-tuning user's most
//! common useful task is a fixed output format, and a format is a *rule*, learned from a few
//! hundred examples and applied to inputs never seen. Its evaluation therefore measures whether
//! the fine-tuning taught something general, not whether one answer string was memorised. An
//! instruction-tuned model does not produce this format before training (the instruction does
//! not describe it: the order last-name-first and the `|` separators are learned from the
//! examples), so accuracy before fine-tuning is near zero and after it can be near one.
//!
//! Held out for evaluation: the sentence templates *and* the values. Every first name, last name
//! and city of an evaluated sentence is absent from every training sentence, so a correct answer
//! copies new words into the learned format. Grading is exact (after whitespace and case
//! normalisation, [`Expected::Exact`]): a record with anything around it is wrong.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Expected, Sample, SampleKind};

/// The instruction every prompt starts with.
pub const INSTRUCTION: &str = "Write the directory entry for:";

/// Sentence templates of the training samples.
const TRAIN_TEMPLATES: [&str; 6] = [
    "{first} {last} is {age} years old and lives in {city}.",
    "Meet {first} {last}, a {age}-year-old from {city}.",
    "{first} {last} ({age}) has moved to {city}.",
    "Our new member is {first} {last} from {city}, aged {age}.",
    "At {age}, {first} {last} still lives in {city}.",
    "{city} resident {first} {last} is {age}.",
];

/// Held-out sentence templates of the evaluation samples.
const EVAL_TEMPLATES: [&str; 3] = [
    "Born {age} years ago, {first} {last} now calls {city} home.",
    "{first} {last}, who lives in {city}, turned {age} this year.",
    "In {city} we met {first} {last}, who is {age}.",
];

/// The last quarter of each list is held out for evaluation.
const FIRST: [&str; 40] = [
    "Maria", "James", "Aisha", "Tomas", "Elena", "David", "Priya", "Lucas", "Sofia", "Omar",
    "Hannah", "Kenji", "Laura", "Pedro", "Nadia", "Victor", "Grace", "Ahmed", "Clara", "Ivan",
    "Fatima", "Daniel", "Mei", "Samuel", "Julia", "Rafael", "Anna", "Yusuf", "Emma", "Diego",
    "Leila", "Oscar", "Ingrid", "Hugo", "Zara", "Felix", "Rosa", "Marco", "Alice", "Tariq",
];
const LAST: [&str; 40] = [
    "Lopez", "Smith", "Khan", "Novak", "Rossi", "Brown", "Patel", "Silva", "Moreau", "Haddad",
    "Fischer", "Tanaka", "Jensen", "Costa", "Ivanova", "Meyer", "Okafor", "Nguyen", "Dubois",
    "Kowalski", "Garcia", "Wilson", "Chen", "Larsen", "Bauer", "Santos", "Kim", "Murphy", "Ali",
    "Romero", "Schmidt", "Berg", "Russo", "Walsh", "Sato", "Mendes", "Weber", "Holm", "Mensah",
    "Horvat",
];
const CITIES: [&str; 40] = [
    "Oslo", "Lima", "Cairo", "Dublin", "Madrid", "Toronto", "Nairobi", "Lisbon", "Seoul", "Quito",
    "Vienna", "Denver", "Manila", "Porto", "Krakow", "Accra", "Boston", "Hanoi", "Geneva", "Perth",
    "Bergen", "Austin", "Lyon", "Munich", "Osaka", "Tunis", "Santiago", "Warsaw", "Athens",
    "Glasgow", "Helsinki", "Dakar", "Leeds", "Bogota", "Naples", "Riga", "Zagreb", "Kyoto",
    "Tallinn", "Seville",
];

/// Where the held-out values start in each list.
const HELD_OUT: usize = 30;

/// Seed offsets of the two sample streams, so that the training and evaluation samples of one
/// seed do not depend on how many of the other are drawn.
const TRAIN_STREAM: u64 = 0x5EC0_0001;
const EVAL_STREAM: u64 = 0x5EC0_0002;

/// One person.
struct Person {
    first: &'static str,
    last: &'static str,
    age: u32,
    city: &'static str,
}

impl Person {
    fn draw(rng: &mut StdRng, held_out: bool) -> Person {
        let range = if held_out {
            HELD_OUT..FIRST.len()
        } else {
            0..HELD_OUT
        };
        let mut pick = |list: &[&'static str; 40]| list[rng.random_range(range.clone())];
        let first = pick(&FIRST);
        let last = pick(&LAST);
        let city = pick(&CITIES);
        Person {
            first,
            last,
            age: rng.random_range(18..=89),
            city,
        }
    }

    fn sentence(&self, template: &str) -> String {
        template
            .replace("{first}", self.first)
            .replace("{last}", self.last)
            .replace("{age}", &self.age.to_string())
            .replace("{city}", self.city)
    }

    /// The directory entry: `Last, First | age | City`.
    fn entry(&self) -> String {
        format!(
            "{}, {} | {} | {}",
            self.last, self.first, self.age, self.city
        )
    }
}

fn samples(seed: u64, n: usize, held_out: bool) -> Vec<Sample> {
    let (stream, templates, part): (u64, &[&str], &str) = if held_out {
        (EVAL_STREAM, &EVAL_TEMPLATES, "eval")
    } else {
        (TRAIN_STREAM, &TRAIN_TEMPLATES, "train")
    };
    let mut rng = StdRng::seed_from_u64(seed ^ stream);
    (0..n)
        .map(|i| {
            let person = Person::draw(&mut rng, held_out);
            let t = rng.random_range(0..templates.len());
            let entry = person.entry();
            Sample {
                id: format!("skill/record/{part}/{i:04}"),
                prompt: format!("{INSTRUCTION} {}", person.sentence(templates[t])),
                response: entry.clone(),
                kind: SampleKind::Skill,
                category: "record".to_string(),
                expected: Some(Expected::Exact(entry)),
            }
        })
        .collect()
}

/// `n` training samples of the records skill for corpus seed `seed`.
pub fn train_samples(seed: u64, n: usize) -> Vec<Sample> {
    samples(seed, n, false)
}

/// `n` evaluation samples (held-out templates and values) for corpus seed `seed`.
pub fn eval_samples(seed: u64, n: usize) -> Vec<Sample> {
    samples(seed, n, true)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn evaluation_holds_out_templates_and_values() {
        let train = train_samples(3, 600);
        let eval = eval_samples(3, 200);
        let words = |s: &Sample| -> HashSet<String> {
            s.response
                .split([',', '|', ' '])
                .filter(|w| !w.is_empty() && !w.chars().all(|c| c.is_ascii_digit()))
                .map(str::to_string)
                .collect()
        };
        let train_words: HashSet<String> = train.iter().flat_map(words).collect();
        for e in &eval {
            assert!(train_words.is_disjoint(&words(e)), "{}", e.prompt);
            assert!(EVAL_TEMPLATES.iter().all(|t| !TRAIN_TEMPLATES.contains(t)));
        }
        // Every template of each part is used.
        for (set, templates) in [(&train, &TRAIN_TEMPLATES[..]), (&eval, &EVAL_TEMPLATES[..])] {
            for t in templates {
                // The template's longest literal text.
                let head = t
                    .split('{')
                    .map(|p| p.split_once('}').map_or(p, |(_, rest)| rest))
                    .max_by_key(|p| p.len())
                    .unwrap();
                assert!(set.iter().any(|s| s.prompt.contains(head)), "{t}");
            }
        }
    }

    #[test]
    fn answers_grade_exactly_and_streams_are_stable() {
        let s = &train_samples(0, 5)[4];
        let want = s.expected.as_ref().unwrap();
        assert!(want.matches(&s.response));
        assert!(want.matches(&format!("  {}.", s.response.to_uppercase())));
        assert!(!want.matches(&format!("Entry: {}", s.response)));
        let p: Vec<&str> = s.response.split(" | ").collect();
        assert_eq!(p.len(), 3, "{}", s.response);
        let (last, first) = p[0].split_once(", ").unwrap();
        assert!(
            s.prompt.contains(&format!("{first} {last}")),
            "{}",
            s.prompt
        );
        assert!(s.prompt.contains(p[1]) && s.prompt.contains(p[2]));
        assert!(s.prompt.starts_with(INSTRUCTION));
        // Drawing more samples does not change the first ones; seeds differ.
        assert_eq!(train_samples(0, 50)[..5], train_samples(0, 5)[..]);
        assert_ne!(train_samples(1, 5), train_samples(0, 5));
    }
}
