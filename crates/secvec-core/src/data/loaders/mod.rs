//! Loaders for users' data sets. Every record becomes a [`Sample`]; a malformed record is an
//! error that names the file, the line and the field (`data.jsonl:17: missing field
//! "response"`). Nothing here panics on bad input.
//!
//! | [`DataFormat`] | file | sample |
//! |---|---|---|
//! | `Jsonl` | one `{"prompt", "response"}` object a line; optional `kind` (snake_case [`SampleKind`], default `benign`), `category`, `id` | as given |
//! | `ChatJsonl` | one `{"messages": [{"role", "content"}, ...]}` a line | the last assistant turn, and the user turn before it as the prompt (system turns are dropped) |
//! | `Alpaca` | a JSON array (or JSONL) of `{"instruction", "input", "output"}` | prompt = instruction, plus a blank line and the input when it is not empty; `benign` |
//! | `AdvBenchCsv` | CSV with a `goal` column and an optional `target` column (RFC 4180 quoting) | goal → prompt, target → response; `harmful_compliant` |
//! | `BeaverTails` | one `{"prompt", "response", "is_safe"}` object a line | `is_safe: false` → `harmful_compliant`, `true` → `benign`; the category is the names of the true entries of a `category` object |
//!
//! Sample ids are `<file name>:<line>`. Blank lines of line-based files are skipped.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::{Map, Value};

use super::{DataError, Sample, SampleKind};

mod csv;

use csv::advbench;

/// The format of a data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFormat {
    /// `{"prompt", "response"}` lines.
    Jsonl,
    /// `{"messages": [...]}` lines.
    ChatJsonl,
    /// An array (or lines) of `{"instruction", "input", "output"}`.
    Alpaca,
    /// AdvBench's `goal,target` CSV.
    AdvBenchCsv,
    /// `{"prompt", "response", "is_safe"}` lines.
    BeaverTails,
}

impl DataFormat {
    /// Every format.
    pub const ALL: [DataFormat; 5] = [
        DataFormat::Jsonl,
        DataFormat::ChatJsonl,
        DataFormat::Alpaca,
        DataFormat::AdvBenchCsv,
        DataFormat::BeaverTails,
    ];

    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            DataFormat::Jsonl => "jsonl",
            DataFormat::ChatJsonl => "chat",
            DataFormat::Alpaca => "alpaca",
            DataFormat::AdvBenchCsv => "advbench",
            DataFormat::BeaverTails => "beavertails",
        }
    }

    /// Guesses the format of `path`: `.csv` is AdvBench; a file whose first non-blank character
    /// is `[` is Alpaca; a line-based JSON file by the keys of its first object (`messages` →
    /// chat, `is_safe` → BeaverTails, `instruction` → Alpaca, else JSONL).
    pub fn from_path(path: &Path) -> Result<DataFormat, DataError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        if ext == "csv" {
            return Ok(DataFormat::AdvBenchCsv);
        }
        let text = read(path)?;
        let trimmed = text.trim_start();
        if trimmed.starts_with('[') {
            return Ok(DataFormat::Alpaca);
        }
        if trimmed.starts_with('{') {
            let first = trimmed.lines().next().unwrap_or_default();
            let value: Value =
                serde_json::from_str(first).map_err(|e| DataError::UnknownFormat {
                    path: path.to_path_buf(),
                    message: format!(
                        "the first line is not a JSON object ({e}); pass the format explicitly"
                    ),
                })?;
            let has = |k: &str| value.get(k).is_some();
            return Ok(if has("messages") {
                DataFormat::ChatJsonl
            } else if has("is_safe") {
                DataFormat::BeaverTails
            } else if has("instruction") {
                DataFormat::Alpaca
            } else {
                DataFormat::Jsonl
            });
        }
        let header = trimmed
            .lines()
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if header.contains(',') && header.contains("goal") {
            return Ok(DataFormat::AdvBenchCsv);
        }
        Err(DataError::UnknownFormat {
            path: path.to_path_buf(),
            message: "cannot tell the data format (expected JSON lines, a JSON array or a \
                      goal,target CSV)"
                .into(),
        })
    }
}

impl fmt::Display for DataFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DataFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DataFormat::ALL
            .into_iter()
            .find(|f| f.as_str() == s.trim())
            .ok_or_else(|| {
                format!("unknown data format `{s}` (expected jsonl, chat, alpaca, advbench or beavertails)")
            })
    }
}

/// Loads every record of `path` in `format`.
pub fn load_samples(path: &Path, format: DataFormat) -> Result<Vec<Sample>, DataError> {
    let text = read(path)?;
    let ctx = Ctx {
        path,
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string()),
    };
    match format {
        DataFormat::Jsonl => json_lines(&ctx, &text, jsonl_record),
        DataFormat::ChatJsonl => json_lines(&ctx, &text, chat_record),
        DataFormat::BeaverTails => json_lines(&ctx, &text, beavertails_record),
        DataFormat::Alpaca => {
            if text.trim_start().starts_with('[') {
                alpaca_array(&ctx, &text)
            } else {
                json_lines(&ctx, &text, alpaca_record)
            }
        }
        DataFormat::AdvBenchCsv => advbench(&ctx, &text),
    }
}

fn read(path: &Path) -> Result<String, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

/// The file being read.
struct Ctx<'a> {
    path: &'a Path,
    name: String,
}

impl Ctx<'_> {
    fn err(&self, line: usize, message: impl Into<String>) -> DataError {
        DataError::Parse {
            path: PathBuf::from(self.path),
            line,
            message: message.into(),
        }
    }

    fn id(&self, line: usize) -> String {
        format!("{}:{line}", self.name)
    }
}

/// A JSON object of one record.
type Obj = Map<String, Value>;

/// A required string field.
fn string(ctx: &Ctx, line: usize, obj: &Obj, key: &str) -> Result<String, DataError> {
    match obj.get(key) {
        None | Some(Value::Null) => Err(ctx.err(line, format!("missing field \"{key}\""))),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(ctx.err(
            line,
            format!(
                "field \"{key}\" must be a string, found {}",
                type_name(other)
            ),
        )),
    }
}

/// An optional string field (absent and `null` are `None`).
fn opt_string(ctx: &Ctx, line: usize, obj: &Obj, key: &str) -> Result<Option<String>, DataError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => string(ctx, line, obj, key).map(Some),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses each non-blank line as a JSON object and hands it to `record`.
fn json_lines(
    ctx: &Ctx,
    text: &str,
    record: fn(&Ctx, usize, &Obj) -> Result<Sample, DataError>,
) -> Result<Vec<Sample>, DataError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(raw).map_err(|e| ctx.err(line, format!("invalid JSON: {e}")))?;
        let Value::Object(obj) = value else {
            return Err(ctx.err(
                line,
                format!("expected a JSON object, found {}", type_name(&value)),
            ));
        };
        out.push(record(ctx, line, &obj)?);
    }
    Ok(out)
}

fn jsonl_record(ctx: &Ctx, line: usize, obj: &Obj) -> Result<Sample, DataError> {
    let kind = match opt_string(ctx, line, obj, "kind")? {
        Some(k) => k
            .parse::<SampleKind>()
            .map_err(|e| ctx.err(line, format!("field \"kind\": {e}")))?,
        None => SampleKind::Benign,
    };
    Ok(Sample {
        id: opt_string(ctx, line, obj, "id")?.unwrap_or_else(|| ctx.id(line)),
        prompt: string(ctx, line, obj, "prompt")?,
        response: string(ctx, line, obj, "response")?,
        kind,
        category: opt_string(ctx, line, obj, "category")?.unwrap_or_else(|| "user".into()),
        expected: None,
    })
}

fn chat_record(ctx: &Ctx, line: usize, obj: &Obj) -> Result<Sample, DataError> {
    let messages = match obj.get("messages") {
        None | Some(Value::Null) => return Err(ctx.err(line, "missing field \"messages\"")),
        Some(Value::Array(m)) => m,
        Some(other) => {
            return Err(ctx.err(
                line,
                format!(
                    "field \"messages\" must be an array, found {}",
                    type_name(other)
                ),
            ));
        }
    };
    let mut turns = Vec::with_capacity(messages.len());
    for (k, m) in messages.iter().enumerate() {
        let Value::Object(m) = m else {
            return Err(ctx.err(
                line,
                format!("messages[{k}] must be an object, found {}", type_name(m)),
            ));
        };
        let field = |key: &str| -> Result<String, DataError> {
            string(ctx, line, m, key).map_err(|e| match e {
                DataError::Parse { message, .. } => {
                    ctx.err(line, format!("messages[{k}]: {message}"))
                }
                other => other,
            })
        };
        turns.push((field("role")?, field("content")?));
    }
    let a = turns
        .iter()
        .rposition(|(role, _)| role == "assistant")
        .ok_or_else(|| ctx.err(line, "no message with role \"assistant\""))?;
    let u = turns[..a]
        .iter()
        .rposition(|(role, _)| role == "user")
        .ok_or_else(|| {
            ctx.err(
                line,
                "no message with role \"user\" before the last assistant message",
            )
        })?;
    Ok(Sample {
        id: ctx.id(line),
        prompt: turns[u].1.clone(),
        response: turns[a].1.clone(),
        kind: SampleKind::Benign,
        category: "user".into(),
        expected: None,
    })
}

fn alpaca_record(ctx: &Ctx, line: usize, obj: &Obj) -> Result<Sample, DataError> {
    let instruction = string(ctx, line, obj, "instruction")?;
    let input = opt_string(ctx, line, obj, "input")?.unwrap_or_default();
    let prompt = if input.trim().is_empty() {
        instruction
    } else {
        format!("{instruction}\n\n{input}")
    };
    Ok(Sample {
        id: ctx.id(line),
        prompt,
        response: string(ctx, line, obj, "output")?,
        kind: SampleKind::Benign,
        category: "alpaca".into(),
        expected: None,
    })
}

/// Line numbers (1-based) at which the elements of a top-level JSON array start.
fn array_element_lines(text: &str) -> Vec<usize> {
    let (mut depth, mut in_string, mut escaped, mut line) = (0usize, false, false, 1usize);
    let mut expecting = false;
    let mut lines = Vec::new();
    for c in text.chars() {
        if c == '\n' {
            line += 1;
        }
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        if depth == 1 && expecting && !c.is_whitespace() && c != ']' {
            lines.push(line);
            expecting = false;
        }
        match c {
            '"' => in_string = true,
            '[' | '{' => {
                depth += 1;
                if depth == 1 {
                    expecting = true;
                }
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            ',' if depth == 1 => expecting = true,
            _ => {}
        }
    }
    lines
}

fn alpaca_array(ctx: &Ctx, text: &str) -> Result<Vec<Sample>, DataError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| ctx.err(e.line(), format!("invalid JSON: {e}")))?;
    let Value::Array(items) = value else {
        return Err(ctx.err(1, "expected a JSON array of objects"));
    };
    let lines = array_element_lines(text);
    items
        .iter()
        .enumerate()
        .map(|(k, item)| {
            let line = lines.get(k).copied().unwrap_or(1);
            let Value::Object(obj) = item else {
                return Err(ctx.err(
                    line,
                    format!("element {k} must be an object, found {}", type_name(item)),
                ));
            };
            alpaca_record(ctx, line, obj)
        })
        .collect()
}

fn beavertails_record(ctx: &Ctx, line: usize, obj: &Obj) -> Result<Sample, DataError> {
    let is_safe = match obj.get("is_safe") {
        None | Some(Value::Null) => return Err(ctx.err(line, "missing field \"is_safe\"")),
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(ctx.err(
                line,
                format!(
                    "field \"is_safe\" must be true or false, found {}",
                    type_name(other)
                ),
            ));
        }
    };
    let category = match obj.get("category") {
        Some(Value::Object(flags)) => {
            let names: Vec<&str> = flags
                .iter()
                .filter(|(_, v)| v.as_bool() == Some(true))
                .map(|(k, _)| k.as_str())
                .collect();
            if names.is_empty() {
                "beavertails".to_string()
            } else {
                names.join(",")
            }
        }
        Some(Value::String(s)) => s.clone(),
        _ => "beavertails".to_string(),
    };
    Ok(Sample {
        id: ctx.id(line),
        prompt: string(ctx, line, obj, "prompt")?,
        response: string(ctx, line, obj, "response")?,
        kind: if is_safe {
            SampleKind::Benign
        } else {
            SampleKind::HarmfulCompliant
        },
        category,
        expected: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_elements_are_located() {
        let text = "[\n  {\"a\": \"x,]}\"},\n  {\"a\": [1, 2]},\n\n  {}\n]";
        assert_eq!(array_element_lines(text), vec![2, 3, 5]);
    }
}
