//! The suite's records (`CaseResult`, `SuiteReport`; `bench/reference_torch.py` writes the same
//! JSON) and their Markdown table, side by side with a reference run.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// One measured case; `bench/reference_torch.py` writes the same fields.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseResult {
    pub shape: String,
    /// `train-lora`, `train-full` or `generate`.
    pub case: String,
    /// Sequences per step (training) or prompts (generation).
    pub batch: usize,
    pub tokens_per_s: f64,
    /// Seconds until the first step/call finished (compilation, autotune, allocation).
    pub warmup_seconds: f64,
    /// Median seconds per timed step (training) or per generate call.
    pub seconds: f64,
    pub params: usize,
    pub trainable_params: usize,
    pub model_tflops: Option<f64>,
    pub peak_host_mib: Option<f64>,
    pub peak_gpu_mib: Option<f64>,
    pub error: Option<String>,
}

#[derive(Serialize, Deserialize)]
pub struct SuiteReport {
    pub tool: String,
    pub backend: String,
    pub dtype: String,
    pub device: String,
    pub command: String,
    pub results: Vec<CaseResult>,
}

#[cfg(test)]
impl SuiteReport {
    /// The same report header with other results.
    pub fn clone_with(&self, results: Vec<CaseResult>) -> SuiteReport {
        SuiteReport {
            tool: self.tool.clone(),
            backend: self.backend.clone(),
            dtype: self.dtype.clone(),
            device: self.device.clone(),
            command: self.command.clone(),
            results,
        }
    }
}

pub(super) fn load_reference(path: Option<&std::path::Path>) -> Result<Option<SuiteReport>> {
    let Some(p) = path else { return Ok(None) };
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    Ok(Some(serde_json::from_str(&text).with_context(|| {
        format!("parsing {} (a bench/reference_torch.py JSON)", p.display())
    })?))
}

pub fn markdown(r: &SuiteReport, reference: Option<&SuiteReport>, peak: Option<f64>) -> String {
    let mut s = format!(
        "# Benchmark suite: secvec on {} ({}), {}\n\nCommand: `{}`\n\nRandom weights; training on \
         random tokens (loss on every position), generation greedy without early stop. Warm-up is \
         the first step/call (kernel compilation, autotune, allocation) and is not in the speed.\n\n",
        r.backend, r.dtype, r.device, r.command
    );
    if let Some(rf) = reference {
        s += &format!(
            "Reference: {} on {} ({}), `{}`.\n\n",
            rf.tool, rf.device, rf.dtype, rf.command
        );
        if rf.dtype != r.dtype {
            s += &format!(
                "**The precisions differ ({} here, {} in the reference): the ratio compares \
                 unlike runs.**\n\n",
                r.dtype, rf.dtype
            );
        }
    }
    s += "| shape | case | batch | tokens/s | warm-up s | model TFLOP/s |";
    if peak.is_some() {
        s += " MFU |";
    }
    s += " peak host MiB | peak GPU MiB |";
    if reference.is_some() {
        s += " reference tokens/s | ratio |";
    }
    s += "\n|---|---|---:|---:|---:|---:|";
    if peak.is_some() {
        s += "---:|";
    }
    s += "---:|---:|";
    if reference.is_some() {
        s += "---:|---:|";
    }
    s += "\n";
    let opt = |v: Option<f64>, p: usize| v.map_or("—".to_string(), |x| format!("{x:.p$}"));
    for c in &r.results {
        if let Some(e) = &c.error {
            s += &format!("| {} | {} | {} | {e} |\n", c.shape, c.case, c.batch);
            continue;
        }
        s += &format!(
            "| {} | {} | {} | {:.1} | {:.1} | {} |",
            c.shape,
            c.case,
            c.batch,
            c.tokens_per_s,
            c.warmup_seconds,
            opt(c.model_tflops, 3)
        );
        if let Some(p) = peak {
            s += &match c.model_tflops {
                Some(t) => format!(" {:.1}% |", 100.0 * t / p),
                None => " — |".to_string(),
            };
        }
        s += &format!(
            " {} | {} |",
            opt(c.peak_host_mib, 0),
            opt(c.peak_gpu_mib, 0)
        );
        if let Some(rf) = reference {
            match rf.results.iter().find(|x| {
                x.shape == c.shape && x.case == c.case && x.batch == c.batch && x.error.is_none()
            }) {
                Some(x) => {
                    s += &format!(
                        " {:.1} | {:.2}× |",
                        x.tokens_per_s,
                        c.tokens_per_s / x.tokens_per_s
                    )
                }
                None => s += " — | — |",
            }
        }
        s += "\n";
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(shape: &str, case: &str, batch: usize, tps: f64) -> CaseResult {
        CaseResult {
            shape: shape.into(),
            case: case.into(),
            batch,
            tokens_per_s: tps,
            warmup_seconds: 1.0,
            seconds: 1.0,
            params: 1,
            trainable_params: 1,
            model_tflops: Some(2.0),
            peak_host_mib: Some(10.0),
            peak_gpu_mib: None,
            error: None,
        }
    }

    #[test]
    fn the_table_pairs_cases_with_the_reference_and_gives_ratio_and_mfu() {
        let ours = SuiteReport {
            tool: "secvec".into(),
            backend: "cuda".into(),
            dtype: "f32".into(),
            device: "dev".into(),
            command: "c".into(),
            results: vec![
                case("llama-1b", "train-lora", 8, 300.0),
                case("llama-1b", "generate", 16, 50.0),
            ],
        };
        let mut reference = ours.clone_with(vec![case("llama-1b", "train-lora", 8, 600.0)]);
        reference.tool = "torch".into();
        let md = markdown(&ours, Some(&reference), Some(20.0));
        let lora = md.lines().find(|l| l.contains("train-lora")).unwrap();
        assert!(lora.contains("| 600.0 | 0.50× |"), "{lora}");
        assert!(lora.contains("| 10.0% |"), "{lora}");
        let gen_line = md.lines().find(|l| l.contains("generate")).unwrap();
        assert!(gen_line.ends_with("| — | — |"), "{gen_line}");
    }
}
