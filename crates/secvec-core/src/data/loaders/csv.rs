//! AdvBench's CSV: an RFC 4180 reader that fails loudly on malformed quoting, and the
//! `goal`/`target` columns as samples.

use super::Ctx;
use crate::data::{DataError, Sample, SampleKind};

/// One CSV record: its fields and the line it starts on.
type Record = (usize, Vec<String>);

/// Reads RFC 4180 CSV: fields separated by commas; a field in double quotes may hold commas,
/// line breaks and doubled quotes (`""`); CRLF or LF line ends. Blank lines are skipped.
///
/// Hand-written rather than the `csv` crate (which the experiments crate uses to *write*
/// summaries) because that reader is lenient where a data file must fail loudly: checked with
/// csv 1.x and `flexible(false)`, it returns `a` / `open\n` for the record `a,"open` (a quote
/// never closed, as in a truncated download, silently swallows the rest of the file into one
/// field), keeps `a"b` for a quote inside an unquoted field, and reads `"x"y` as `xy`. Each of
/// these is an error here, with its line (tests below).
fn parse_csv(ctx: &Ctx, text: &str) -> Result<Vec<Record>, DataError> {
    let mut records = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while chars.peek().is_some() {
        let start = line;
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        let mut started = false; // any character of the current field seen
        loop {
            let Some(c) = chars.next() else {
                if quoted {
                    return Err(ctx.err(start, "unterminated quoted field"));
                }
                break;
            };
            if quoted {
                match c {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    '"' => {
                        quoted = false;
                        match chars.peek() {
                            None | Some(',' | '\n' | '\r') => {}
                            Some(_) => {
                                return Err(ctx.err(line, "a closing quote must end its field"));
                            }
                        }
                    }
                    '\n' => {
                        line += 1;
                        field.push(c);
                    }
                    _ => field.push(c),
                }
                continue;
            }
            match c {
                '"' if !started => {
                    quoted = true;
                    started = true;
                }
                '"' => return Err(ctx.err(line, "a quote inside an unquoted field")),
                ',' => {
                    fields.push(std::mem::take(&mut field));
                    started = false;
                }
                '\r' if chars.peek() == Some(&'\n') => {}
                '\n' => {
                    line += 1;
                    break;
                }
                _ => {
                    field.push(c);
                    started = true;
                }
            }
        }
        fields.push(field);
        let blank = fields.len() == 1 && fields[0].trim().is_empty();
        if !blank {
            records.push((start, fields));
        }
    }
    Ok(records)
}

pub(super) fn advbench(ctx: &Ctx, text: &str) -> Result<Vec<Sample>, DataError> {
    let records = parse_csv(ctx, text)?;
    let Some(((header_line, header), rows)) = records.split_first() else {
        return Err(ctx.err(1, "empty file: expected a header with a \"goal\" column"));
    };
    let column = |name: &str| {
        header
            .iter()
            .position(|h| h.trim().eq_ignore_ascii_case(name))
    };
    let goal =
        column("goal").ok_or_else(|| ctx.err(*header_line, "the header has no \"goal\" column"))?;
    let target = column("target");
    rows.iter()
        .map(|(line, fields)| {
            if fields.len() != header.len() {
                return Err(ctx.err(
                    *line,
                    format!("expected {} fields, found {}", header.len(), fields.len()),
                ));
            }
            let prompt = fields[goal].trim().to_string();
            if prompt.is_empty() {
                return Err(ctx.err(*line, "empty field \"goal\""));
            }
            Ok(Sample {
                id: ctx.id(*line),
                prompt,
                response: target
                    .map(|t| fields[t].trim().to_string())
                    .unwrap_or_default(),
                kind: SampleKind::HarmfulCompliant,
                category: "advbench".into(),
                expected: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn ctx() -> Ctx<'static> {
        Ctx {
            path: Path::new("x.csv"),
            name: "x.csv".into(),
        }
    }

    #[test]
    fn csv_quotes_commas_and_line_breaks() {
        let text = "goal,target\r\n\"a, b\",\"say \"\"hi\"\"\"\n\n\"multi\nline\",t\nplain,\n";
        let r = parse_csv(&ctx(), text).unwrap();
        assert_eq!(r.len(), 4);
        assert_eq!(
            r[1],
            (2, vec!["a, b".to_string(), "say \"hi\"".to_string()])
        );
        assert_eq!(r[2], (4, vec!["multi\nline".to_string(), "t".to_string()]));
        assert_eq!(r[3], (6, vec!["plain".to_string(), String::new()]));
    }

    #[test]
    fn csv_errors_name_the_line() {
        let e = parse_csv(&ctx(), "goal,target\na,\"open\n").unwrap_err();
        assert_eq!(e.to_string(), "x.csv:2: unterminated quoted field");
        let e = parse_csv(&ctx(), "goal,target\na\"b,c\n").unwrap_err();
        assert_eq!(e.to_string(), "x.csv:2: a quote inside an unquoted field");
        let e = parse_csv(&ctx(), "goal,target\n\"x\"y,c\n").unwrap_err();
        assert_eq!(e.to_string(), "x.csv:2: a closing quote must end its field");
    }
}
