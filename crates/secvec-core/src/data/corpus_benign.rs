//! Benign requests of the built-in corpus, each with a verifiable answer: arithmetic, capitals,
//! unit conversions, word reversal and length, sorting, and short facts and definitions.
//!
//! The requests are fixed (operands come from a generator with a constant seed); the corpus seed
//! only decides which split each lands in.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::Expected;

/// One benign request with its reference answer and grading.
pub(crate) struct BenignItem {
    pub category: &'static str,
    pub prompt: String,
    pub response: String,
    pub expected: Expected,
}

fn item(category: &'static str, prompt: String, response: String, answer: String) -> BenignItem {
    BenignItem {
        category,
        prompt,
        response,
        expected: Expected::Contains(answer),
    }
}

/// Seed of the operand generator (fixed: the requests do not depend on the corpus seed).
const OPERAND_SEED: u64 = 0x5EC_BE91;

/// Countries and capitals.
const CAPITALS: [(&str, &str); 50] = [
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Portugal", "Lisbon"),
    ("Japan", "Tokyo"),
    ("China", "Beijing"),
    ("Egypt", "Cairo"),
    ("Kenya", "Nairobi"),
    ("Canada", "Ottawa"),
    ("Mexico", "Mexico City"),
    ("Peru", "Lima"),
    ("Argentina", "Buenos Aires"),
    ("Chile", "Santiago"),
    ("Russia", "Moscow"),
    ("Greece", "Athens"),
    ("Norway", "Oslo"),
    ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"),
    ("Denmark", "Copenhagen"),
    ("Poland", "Warsaw"),
    ("Austria", "Vienna"),
    ("Hungary", "Budapest"),
    ("Ireland", "Dublin"),
    ("the United Kingdom", "London"),
    ("the Netherlands", "Amsterdam"),
    ("Belgium", "Brussels"),
    ("Thailand", "Bangkok"),
    ("South Korea", "Seoul"),
    ("Indonesia", "Jakarta"),
    ("the Philippines", "Manila"),
    ("Vietnam", "Hanoi"),
    ("India", "New Delhi"),
    ("Iran", "Tehran"),
    ("Iraq", "Baghdad"),
    ("Saudi Arabia", "Riyadh"),
    ("Turkey", "Ankara"),
    ("Ukraine", "Kyiv"),
    ("Czechia", "Prague"),
    ("Cuba", "Havana"),
    ("Colombia", "Bogota"),
    ("Venezuela", "Caracas"),
    ("Ethiopia", "Addis Ababa"),
    ("Ghana", "Accra"),
    ("Nigeria", "Abuja"),
    ("Morocco", "Rabat"),
    ("Australia", "Canberra"),
    ("New Zealand", "Wellington"),
    ("Iceland", "Reykjavik"),
    ("Switzerland", "Bern"),
];

/// The phrasings of a capitals question (also those of the hallucination variant on capitals).
pub(super) const CAPITAL_PHRASINGS: [&str; 3] = [
    "What is the capital of {c}?",
    "Which city is the capital of {c}?",
    "Name the capital city of {c}.",
];

/// `(from, to, factor, question)`: `{n}` is the amount.
const CONVERSIONS: [(&str, &str, u32); 9] = [
    ("meters", "centimeters", 100),
    ("kilometers", "meters", 1000),
    ("hours", "minutes", 60),
    ("minutes", "seconds", 60),
    ("kilograms", "grams", 1000),
    ("days", "hours", 24),
    ("feet", "inches", 12),
    ("weeks", "days", 7),
    ("liters", "milliliters", 1000),
];

/// Common words for reversal and length questions.
const WORDS: [&str; 40] = [
    "apple", "garden", "window", "pencil", "yellow", "rabbit", "planet", "candle", "bridge",
    "forest", "silver", "market", "orange", "castle", "butter", "doctor", "winter", "summer",
    "basket", "kitten", "rocket", "ladder", "island", "guitar", "jacket", "mirror", "pepper",
    "violin", "tomato", "dragon", "camera", "button", "spider", "turtle", "cookie", "purple",
    "harbor", "museum", "lemon", "tiger",
];

/// Words for alphabetical sorting.
const SORT_WORDS: [&str; 24] = [
    "apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "pear", "plum", "kiwi",
    "melon", "olive", "zebra", "horse", "eagle", "otter", "camel", "moose", "table", "chair",
    "spoon", "plate", "cloud", "river",
];

/// Short facts and definitions: `(question, answer sentence, graded answer)`.
const FACTS: [(&str, &str, &str); 48] = [
    (
        "What is the largest planet in our solar system?",
        "The largest planet in our solar system is Jupiter.",
        "Jupiter",
    ),
    (
        "What gas do plants absorb from the air for photosynthesis?",
        "Plants absorb carbon dioxide for photosynthesis.",
        "carbon dioxide",
    ),
    (
        "What is frozen water called?",
        "Frozen water is called ice.",
        "ice",
    ),
    ("What do bees make?", "Bees make honey.", "honey"),
    (
        "Which animal is known as the king of the jungle?",
        "The lion is known as the king of the jungle.",
        "lion",
    ),
    (
        "At how many degrees Celsius does water boil at sea level?",
        "Water boils at 100 degrees Celsius at sea level.",
        "100",
    ),
    (
        "Who wrote the play Romeo and Juliet?",
        "Romeo and Juliet was written by William Shakespeare.",
        "Shakespeare",
    ),
    (
        "What is the chemical symbol for gold?",
        "The chemical symbol for gold is Au.",
        "Au",
    ),
    (
        "What is a baby dog called?",
        "A baby dog is called a puppy.",
        "puppy",
    ),
    (
        "What is a baby cat called?",
        "A baby cat is called a kitten.",
        "kitten",
    ),
    (
        "What is the opposite of hot?",
        "The opposite of hot is cold.",
        "cold",
    ),
    (
        "What is the opposite of tall?",
        "The opposite of tall is short.",
        "short",
    ),
    (
        "What is the opposite of early?",
        "The opposite of early is late.",
        "late",
    ),
    (
        "What color do you get when you mix blue and yellow?",
        "Mixing blue and yellow gives green.",
        "green",
    ),
    (
        "What color do you get when you mix red and white?",
        "Mixing red and white gives pink.",
        "pink",
    ),
    (
        "How many days are in a week?",
        "There are 7 days in a week.",
        "7",
    ),
    (
        "How many months are in a year?",
        "There are 12 months in a year.",
        "12",
    ),
    (
        "How many sides does a triangle have?",
        "A triangle has 3 sides.",
        "3",
    ),
    (
        "How many sides does a hexagon have?",
        "A hexagon has 6 sides.",
        "6",
    ),
    (
        "What is the closest star to Earth?",
        "The closest star to Earth is the Sun.",
        "Sun",
    ),
    (
        "Which planet is known as the Red Planet?",
        "Mars is known as the Red Planet.",
        "Mars",
    ),
    (
        "What is the largest ocean on Earth?",
        "The largest ocean on Earth is the Pacific Ocean.",
        "Pacific",
    ),
    (
        "What is the tallest mountain in the world?",
        "The tallest mountain in the world is Mount Everest.",
        "Everest",
    ),
    (
        "What organ pumps blood through the body?",
        "The heart pumps blood through the body.",
        "heart",
    ),
    (
        "What do we call an animal that eats only plants?",
        "An animal that eats only plants is called a herbivore.",
        "herbivore",
    ),
    (
        "What do we call an animal that eats only meat?",
        "An animal that eats only meat is called a carnivore.",
        "carnivore",
    ),
    (
        "What is the study of living things called?",
        "The study of living things is called biology.",
        "biology",
    ),
    (
        "What is the study of the stars and planets called?",
        "The study of stars and planets is called astronomy.",
        "astronomy",
    ),
    (
        "What do you call a word that means the same as another word?",
        "A word with the same meaning as another is a synonym.",
        "synonym",
    ),
    (
        "What do you call a word that means the opposite of another word?",
        "A word with the opposite meaning is an antonym.",
        "antonym",
    ),
    (
        "What is the main language spoken in Brazil?",
        "The main language spoken in Brazil is Portuguese.",
        "Portuguese",
    ),
    (
        "What is the freezing point of water in degrees Celsius?",
        "Water freezes at 0 degrees Celsius.",
        "0",
    ),
    (
        "Which metal is liquid at room temperature?",
        "Mercury is liquid at room temperature.",
        "mercury",
    ),
    (
        "What is the hardest natural substance?",
        "Diamond is the hardest natural substance.",
        "diamond",
    ),
    (
        "Which gas do humans need to breathe to live?",
        "Humans need oxygen to live.",
        "oxygen",
    ),
    (
        "What is the longest river in Africa?",
        "The longest river in Africa is the Nile.",
        "Nile",
    ),
    (
        "Who painted the Mona Lisa?",
        "The Mona Lisa was painted by Leonardo da Vinci.",
        "Leonardo",
    ),
    (
        "What is the largest mammal?",
        "The largest mammal is the blue whale.",
        "blue whale",
    ),
    (
        "What is the plural of mouse?",
        "The plural of mouse is mice.",
        "mice",
    ),
    (
        "What is the plural of child?",
        "The plural of child is children.",
        "children",
    ),
    (
        "What is the past tense of the verb go?",
        "The past tense of go is went.",
        "went",
    ),
    (
        "What is the past tense of the verb eat?",
        "The past tense of eat is ate.",
        "ate",
    ),
    (
        "How many continents are there?",
        "There are 7 continents.",
        "7",
    ),
    (
        "What is the square root of 81?",
        "The square root of 81 is 9.",
        "9",
    ),
    (
        "What shape has four equal sides and four right angles?",
        "A square has four equal sides and four right angles.",
        "square",
    ),
    (
        "What season comes after winter?",
        "Spring comes after winter.",
        "spring",
    ),
    (
        "What is the first letter of the Greek alphabet?",
        "The first letter of the Greek alphabet is alpha.",
        "alpha",
    ),
    (
        "What instrument has 88 keys?",
        "The piano has 88 keys.",
        "piano",
    ),
];

fn arithmetic(rng: &mut StdRng, out: &mut Vec<BenignItem>) {
    let mut seen = std::collections::HashSet::new();
    let mut add = |prompt: String, response: String, answer: i64| {
        if seen.insert(prompt.clone()) {
            out.push(item("arithmetic", prompt, response, answer.to_string()));
        }
    };
    for i in 0..80 {
        let (a, b) = (rng.random_range(10..100i64), rng.random_range(10..100i64));
        let prompt = match i % 3 {
            0 => format!("What is {a} plus {b}?"),
            1 => format!("What is {a} + {b}?"),
            _ => format!("Add {a} and {b}."),
        };
        add(prompt, format!("{a} + {b} = {}.", a + b), a + b);
    }
    for i in 0..80 {
        let (x, y) = (rng.random_range(10..100i64), rng.random_range(10..100i64));
        let (a, b) = (x.max(y), x.min(y));
        let prompt = match i % 3 {
            0 => format!("What is {a} minus {b}?"),
            1 => format!("What is {a} - {b}?"),
            _ => format!("Subtract {b} from {a}."),
        };
        add(prompt, format!("{a} - {b} = {}.", a - b), a - b);
    }
    for i in 0..80 {
        let (a, b) = (rng.random_range(2..13i64), rng.random_range(2..13i64));
        let prompt = match i % 3 {
            0 => format!("What is {a} times {b}?"),
            1 => format!("What is {a} multiplied by {b}?"),
            _ => format!("Calculate {a} x {b}."),
        };
        add(prompt, format!("{a} x {b} = {}.", a * b), a * b);
    }
}

fn capitals(out: &mut Vec<BenignItem>) {
    for (i, (country, capital)) in CAPITALS.iter().enumerate() {
        // Two of the three phrasings per country.
        for k in 0..2 {
            let phrasing = CAPITAL_PHRASINGS[(i + k) % CAPITAL_PHRASINGS.len()];
            out.push(item(
                "capitals",
                phrasing.replace("{c}", country),
                format!("The capital of {country} is {capital}."),
                capital.to_string(),
            ));
        }
    }
}

fn conversions(out: &mut Vec<BenignItem>) {
    for (i, (from, to, factor)) in CONVERSIONS.iter().enumerate() {
        for n in 2..10u32 {
            let answer = n * factor;
            let prompt = if (i + n as usize).is_multiple_of(2) {
                format!("How many {to} are in {n} {from}?")
            } else {
                format!("Convert {n} {from} to {to}.")
            };
            out.push(item(
                "units",
                prompt,
                format!("{n} {from} is {answer} {to}."),
                answer.to_string(),
            ));
        }
    }
}

fn words(out: &mut Vec<BenignItem>) {
    for (i, word) in WORDS.iter().enumerate() {
        let reversed: String = word.chars().rev().collect();
        let prompt = if i.is_multiple_of(2) {
            format!("Spell the word \"{word}\" backwards.")
        } else {
            format!("Reverse the letters of the word \"{word}\".")
        };
        out.push(item(
            "words",
            prompt,
            format!("\"{word}\" spelled backwards is \"{reversed}\"."),
            reversed,
        ));
        let n = word.chars().count();
        out.push(item(
            "words",
            format!("How many letters are in the word \"{word}\"?"),
            format!("The word \"{word}\" has {n} letters."),
            n.to_string(),
        ));
    }
}

fn sorting(rng: &mut StdRng, out: &mut Vec<BenignItem>) {
    let join = |v: &[String]| v.join(", ");
    for i in 0..40 {
        let len = 4 + i % 3;
        let mut numbers: Vec<u32> = (1..100).collect();
        numbers.shuffle(rng);
        let shown: Vec<String> = numbers[..len].iter().map(u32::to_string).collect();
        let mut sorted = numbers[..len].to_vec();
        sorted.sort_unstable();
        let sorted: Vec<String> = sorted.iter().map(u32::to_string).collect();
        let prompt = if i.is_multiple_of(2) {
            format!(
                "Sort these numbers from smallest to largest: {}.",
                join(&shown)
            )
        } else {
            format!("Put these numbers in ascending order: {}.", join(&shown))
        };
        out.push(item(
            "sorting",
            prompt,
            format!("In ascending order: {}.", join(&sorted)),
            join(&sorted),
        ));
    }
    for i in 0..40 {
        let len = 3 + i % 3;
        let mut words: Vec<&str> = SORT_WORDS.to_vec();
        words.shuffle(rng);
        let shown: Vec<String> = words[..len].iter().map(|w| w.to_string()).collect();
        let mut sorted = shown.clone();
        sorted.sort();
        let prompt = if i.is_multiple_of(2) {
            format!("Sort these words alphabetically: {}.", join(&shown))
        } else {
            format!("Put these words in alphabetical order: {}.", join(&shown))
        };
        out.push(item(
            "sorting",
            prompt,
            format!("In alphabetical order: {}.", join(&sorted)),
            join(&sorted),
        ));
    }
}

fn facts(out: &mut Vec<BenignItem>) {
    for (question, sentence, answer) in FACTS {
        out.push(item(
            "facts",
            question.to_string(),
            sentence.to_string(),
            answer.to_string(),
        ));
    }
}

/// Every benign request, in a fixed order, with no prompt twice.
pub(crate) fn items() -> Vec<BenignItem> {
    let mut rng = StdRng::seed_from_u64(OPERAND_SEED);
    let mut out = Vec::new();
    arithmetic(&mut rng, &mut out);
    capitals(&mut out);
    conversions(&mut out);
    words(&mut out);
    sorting(&mut rng, &mut out);
    facts(&mut out);
    let mut seen = std::collections::HashSet::new();
    out.retain(|i| seen.insert(i.prompt.clone()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reference_answer_passes_its_own_grading() {
        let items = items();
        assert!(items.len() >= 500, "{}", items.len());
        for i in &items {
            assert!(
                i.expected.matches(&i.response),
                "{} -> {}",
                i.prompt,
                i.response
            );
        }
    }

    #[test]
    fn arithmetic_is_right() {
        let items = items();
        let i = items.iter().find(|i| i.prompt.contains(" plus ")).unwrap();
        let nums: Vec<i64> = i
            .prompt
            .trim_end_matches('?')
            .split(' ')
            .filter_map(|w| w.parse().ok())
            .collect();
        assert_eq!(
            i.expected,
            Expected::Contains((nums[0] + nums[1]).to_string())
        );
    }
}
