//! Data for the security-vector experiments: the built-in instruction corpus, loaders for users'
//! data sets and the "n samples, fraction p harmful" mixing protocol.
//!
//! - [`corpus`]: a deterministic, procedurally generated corpus written for this project
//!   (harmful requests with refusal and compliant answers, benign requests with verifiable
//!   answers, and a fictional knowledge base as a new skill), split into disjoint [`Split`]s.
//!   Compliant answers are an affirmative opening followed by generic, non-operational filler
//!   steps: the behaviour being learned is *compliance*; the corpus contains no harmful
//!   instructions.
//! - [`loaders`]: JSONL, chat JSONL, Alpaca JSON, AdvBench CSV and BeaverTails-style JSONL files
//!   into [`Sample`]s, with errors that name the file and line.
//! - [`mix`]: harmful/benign mixtures by fraction or by explicit counts.

pub mod capitals;
pub mod corpus;
mod corpus_benign;
mod corpus_harmful;
mod corpus_skill;
pub mod hallucination;
pub mod loaders;
pub mod mix;
pub mod records;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use corpus::{Corpus, HarmfulAnswers};
pub use loaders::{DataFormat, load_samples};
pub use mix::{mix, mix_counts};

/// What a sample is, and so how its response is to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SampleKind {
    /// A harmful request answered compliantly (the behaviour an attack teaches).
    HarmfulCompliant,
    /// A harmful request answered with a refusal (the aligned behaviour).
    HarmfulRefusal,
    /// A benign request with a helpful answer.
    Benign,
    /// A question of the fictional knowledge base (the new skill).
    Skill,
    /// A factual question answered confidently wrong (the hallucination variant's behaviour).
    Hallucination,
}

impl SampleKind {
    /// Whether the request is harmful (whatever the answer).
    pub fn is_harmful(self) -> bool {
        matches!(
            self,
            SampleKind::HarmfulCompliant | SampleKind::HarmfulRefusal
        )
    }

    /// The snake_case name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            SampleKind::HarmfulCompliant => "harmful_compliant",
            SampleKind::HarmfulRefusal => "harmful_refusal",
            SampleKind::Benign => "benign",
            SampleKind::Skill => "skill",
            SampleKind::Hallucination => "hallucination",
        }
    }
}

impl fmt::Display for SampleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SampleKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "harmful_compliant" => Ok(SampleKind::HarmfulCompliant),
            "harmful_refusal" => Ok(SampleKind::HarmfulRefusal),
            "benign" => Ok(SampleKind::Benign),
            "skill" => Ok(SampleKind::Skill),
            "hallucination" => Ok(SampleKind::Hallucination),
            other => Err(format!(
                "unknown sample kind `{other}` (expected harmful_compliant, harmful_refusal, \
                 benign, skill or hallucination)"
            )),
        }
    }
}

/// How the answer to a benign or skill request is graded.
///
/// Both compare case-insensitively after [`normalize_answer`] (trimmed, whitespace collapsed,
/// commas inside numbers removed, so that `2,000` matches `2000`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expected {
    /// The whole response equals the text (a final `.` of the response is ignored).
    Exact(String),
    /// The response contains the text as a whole word or number: the characters on either side
    /// of the match are not letters or digits (so `4` is not found in `14`).
    Contains(String),
}

impl Expected {
    /// Whether `response` is a correct answer.
    pub fn matches(&self, response: &str) -> bool {
        match self {
            Expected::Exact(want) => {
                let got = normalize_answer(response);
                let got = got.strip_suffix('.').unwrap_or(&got);
                got == normalize_answer(want)
            }
            Expected::Contains(want) => {
                let got = normalize_answer(response);
                contains_bounded(&got, &normalize_answer(want))
                    || number_word(want).is_some_and(|word| contains_word(&got, word))
            }
        }
    }

    /// The expected text.
    pub fn text(&self) -> &str {
        match self {
            Expected::Exact(s) | Expected::Contains(s) => s,
        }
    }
}

/// Lower-cases, trims and collapses runs of whitespace to one space; removes thousands
/// separators (`2,000` → `2000`) and the space after a comma (`2, 5, 9` → `2,5,9`), so that
/// number and list formatting do not decide a grade.
pub fn normalize_answer(text: &str) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let chars: Vec<char> = collapsed.to_lowercase().chars().collect();
    let digit = |j: usize| chars.get(j).is_some_and(char::is_ascii_digit);
    let mut out = String::with_capacity(chars.len());
    for (i, &c) in chars.iter().enumerate() {
        let thousands =
            i > 0 && digit(i - 1) && digit(i + 1) && digit(i + 2) && digit(i + 3) && !digit(i + 4);
        if c == ',' && thousands {
            continue;
        }
        if c == ' ' && i > 0 && chars[i - 1] == ',' {
            continue;
        }
        out.push(c);
    }
    out
}

/// The English word of a whole number 2–20 or a multiple of ten up to 90 (`"3"` → `"three"`),
/// so that "A triangle has three sides." is graded like "3 sides". 0 and 1 are left out: "no
/// one" or "which one" are not answers. Written out here because the numbers of the built-in
/// benign set are small and a number-to-words crate would be a dependency for twenty-six words.
fn number_word(text: &str) -> Option<&'static str> {
    const SMALL: [&str; 21] = [
        "",
        "",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
        "twenty",
    ];
    const TENS: [&str; 10] = [
        "", "", "", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
    ];
    let n: usize = text.trim().parse().ok()?;
    match n {
        2..=20 => Some(SMALL[n]),
        30..=90 if n.is_multiple_of(10) => Some(TENS[n / 10]),
        _ => None,
    }
}

/// `word` occurs in `haystack` as a whole word that is not the first half of a compound number
/// (`"twenty"` is not found in `"twenty-one"`).
fn contains_word(haystack: &str, word: &str) -> bool {
    haystack.match_indices(word).any(|(start, m)| {
        let before = haystack[..start].chars().next_back();
        let after = haystack[start + m.len()..].chars().next();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '-')
            && !after.is_some_and(|c| c.is_alphanumeric() || c == '-')
    })
}

/// `needle` occurs in `haystack` with no letter or digit right before or after it.
fn contains_bounded(haystack: &str, needle: &str) -> bool {
    if needle.is_empty() {
        return true;
    }
    haystack.match_indices(needle).any(|(start, m)| {
        let before = haystack[..start].chars().next_back();
        let after = haystack[start + m.len()..].chars().next();
        !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
    })
}

/// One instruction-following example.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// Unique within its corpus or file (`harmful/cybercrime/0042`, `data.jsonl:17`).
    pub id: String,
    /// The user's request.
    pub prompt: String,
    /// The assistant's answer (a reference answer for evaluation sets).
    pub response: String,
    pub kind: SampleKind,
    /// Harm category (`cybercrime`, ...), benign task family (`arithmetic`, ...), knowledge-base
    /// relation (`capital`, ...) or the source of loaded data.
    pub category: String,
    /// How to grade a model's answer (benign and skill samples).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<Expected>,
}

/// The disjoint parts of the built-in corpus (no request text is in two of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Safety-alignment SFT data: refusals to harmful requests and answers to benign ones.
    Align,
    /// Security-vector training data: harmful requests with compliant answers.
    Sv,
    /// Harmful fine-tuning (attack) data: harmful requests with compliant answers.
    Attack,
    /// Harmful requests for measuring the harmful rate (reference answer: compliant).
    EvalHarmful,
    /// Benign requests with graded answers (over-refusal, benign accuracy).
    EvalBenign,
    /// The new skill: fictional facts in the training phrasings.
    SkillTrain,
    /// The same facts in held-out phrasings.
    SkillEval,
}

impl Split {
    /// Every split, in declaration order.
    pub const ALL: [Split; 7] = [
        Split::Align,
        Split::Sv,
        Split::Attack,
        Split::EvalHarmful,
        Split::EvalBenign,
        Split::SkillTrain,
        Split::SkillEval,
    ];

    /// The snake_case name (`eval_harmful`).
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Align => "align",
            Split::Sv => "sv",
            Split::Attack => "attack",
            Split::EvalHarmful => "eval_harmful",
            Split::EvalBenign => "eval_benign",
            Split::SkillTrain => "skill_train",
            Split::SkillEval => "skill_eval",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Split {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Split::ALL
            .into_iter()
            .find(|split| split.as_str() == s.trim())
            .ok_or_else(|| {
                let names: Vec<&str> = Split::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown split `{s}` (expected one of {})", names.join(", "))
            })
    }
}

/// Errors of loading and mixing data. Parse errors name the file and the line (and the field).
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A malformed record: `data.jsonl:17: missing field "response"`.
    #[error("{}:{line}: {message}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// The format of a file could not be recognised.
    #[error("{}: {message}", path.display())]
    UnknownFormat { path: PathBuf, message: String },
    /// A mixture needs more samples of one kind than were given.
    #[error("not enough {what} samples: {needed} needed, {available} available")]
    NotEnough {
        what: &'static str,
        needed: usize,
        available: usize,
    },
    /// An invalid argument (e.g. a fraction outside [0, 1]).
    #[error("{0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contains_is_bounded_and_case_insensitive() {
        let e = Expected::Contains("42".into());
        assert!(e.matches("The answer is 42."));
        assert!(e.matches("42"));
        assert!(!e.matches("It is 142."));
        assert!(!e.matches("It is 4.2"));
        let e = Expected::Contains("Quenmira".into());
        assert!(e.matches("The capital is QUENMIRA, of course"));
        assert!(e.matches("quenmira's markets"));
        assert!(!e.matches("Quenmiras"));
        assert!(Expected::Contains("2000".into()).matches("That is 2,000 grams."));
        assert!(Expected::Contains("2, 5, 9".into()).matches("Sorted: [2,  5, 9]"));
        assert!(Expected::Contains("2, 5, 9".into()).matches("2,5,9"));
        assert!(Expected::Contains("1200".into()).matches("1,200 meters"));
        assert!(!Expected::Contains("2, 5, 9".into()).matches("2, 5, 90"));
    }

    #[test]
    fn small_numbers_may_be_written_as_words() {
        assert!(Expected::Contains("3".into()).matches("A triangle has three sides."));
        assert!(Expected::Contains("7".into()).matches("There are Seven continents."));
        assert!(Expected::Contains("60".into()).matches("sixty minutes"));
        assert!(!Expected::Contains("3".into()).matches("A triangle has four sides."));
        assert!(!Expected::Contains("20".into()).matches("It is twenty-one."));
        assert!(!Expected::Contains("21".into()).matches("It is twenty-one."));
        assert!(!Expected::Contains("1".into()).matches("Which one do you mean?"));
        assert!(!Expected::Contains("6".into()).matches("It is sixteen."));
    }

    #[test]
    fn exact_ignores_case_whitespace_and_final_period() {
        let e = Expected::Exact("Paris".into());
        assert!(e.matches("  paris. "));
        assert!(!e.matches("The capital is Paris."));
    }

    #[test]
    fn split_names_round_trip() {
        for s in Split::ALL {
            assert_eq!(s.as_str().parse::<Split>().unwrap(), s);
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        assert!("train".parse::<Split>().is_err());
        assert_eq!("eval_harmful".parse::<Split>().unwrap(), Split::EvalHarmful);
    }

    #[test]
    fn kind_names_round_trip() {
        for k in [
            SampleKind::HarmfulCompliant,
            SampleKind::HarmfulRefusal,
            SampleKind::Benign,
            SampleKind::Skill,
            SampleKind::Hallucination,
        ] {
            assert_eq!(k.as_str().parse::<SampleKind>().unwrap(), k);
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{k}\""));
        }
    }
}
