//! `bench-suite`: training and generation speed and peak memory for fixed model shapes with
//! random weights (SmolLM2-135M's and a ~1B Llama's), on any backend, as JSON + Markdown.
//!
//! Each case runs in a child process of this binary, so its peak memory (host RSS, and GPU memory
//! from `nvidia-smi` when present) and its warm-up (kernel compilation, autotune) are its own.
//! `bench/reference_torch.py` measures the same cases with PyTorch + transformers + PEFT and
//! writes the same JSON fields, so the two can be compared side by side (`--compare`).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use secvec_models::LlamaConfig;

use crate::backend::{BackendKind, dispatch};
use crate::bench::dtype_suffix;

mod case;
mod report;

use case::{Child, failed_case};
use report::load_reference;
pub use report::{CaseResult, SuiteReport, markdown};

/// The benchmarked shapes.
pub fn shape(name: &str) -> Result<LlamaConfig> {
    Ok(match name {
        // HuggingFaceTB/SmolLM2-135M-Instruct config.json.
        "smollm2-135m" => LlamaConfig::new(49152, 576, 1536, 30, 9, 3, 64)
            .with_rope_theta(100000.0)
            .with_tie_word_embeddings(true),
        // meta-llama/Llama-3.2-1B's shape (config.json): 16 layers, d=2048, GQA 32/8, tied.
        "llama-1b" => LlamaConfig::new(128256, 2048, 8192, 16, 32, 8, 64)
            .with_rope_theta(500000.0)
            .with_tie_word_embeddings(true),
        other => bail!("unknown shape `{other}` (smollm2-135m or llama-1b)"),
    })
}

#[derive(clap::Args, Debug, Clone)]
pub struct SuiteArgs {
    /// Backend to measure.
    #[arg(long, value_enum, default_value_t = BackendKind::Flex)]
    pub backend: BackendKind,
    /// Compute precision: f32, or bf16 / f16 mixed precision (half products, f32 master
    /// weights; the torch reference's `--dtype bf16` is the same autocast scheme).
    #[arg(long, default_value = "f32")]
    pub dtype: secvec_models::Precision,
    /// Shapes (smollm2-135m, llama-1b).
    #[arg(long, value_delimiter = ',', default_value = "smollm2-135m,llama-1b")]
    pub shapes: Vec<String>,
    /// Cases: train-lora (r=8 on q,v), train-full, generate; also train-lora-all (r=8 on all
    /// seven projections, the headline's attack) and train-lora-sv (the same plus frozen, active
    /// security vectors on all seven, the headline's attack with vectors).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "train-lora,train-full,generate"
    )]
    pub cases: Vec<String>,
    /// Generation batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub gen_batches: Vec<usize>,
    #[arg(long, default_value_t = 32)]
    pub prompt_tokens: usize,
    #[arg(long, default_value_t = 32)]
    pub new_tokens: usize,
    /// Training micro-batch (sequences) and sequence length.
    #[arg(long, default_value_t = 8)]
    pub train_batch: usize,
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Timed training steps after the warm-up steps.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup_steps: usize,
    /// Peak dense FLOP/s of the device in TFLOP/s for the precision used, to report model FLOPs
    /// utilisation (e.g. 67 for H100 SXM f32, 989 for its bf16 tensor cores).
    #[arg(long)]
    pub peak_tflops: Option<f64>,
    /// A JSON file from `bench/reference_torch.py` with the same cases, for the ratio column.
    #[arg(long)]
    pub compare: Option<PathBuf>,
    /// Per-case wall-clock limit in seconds (a case over it is reported as timed out).
    #[arg(long, default_value_t = 900)]
    pub case_timeout: u64,
    #[arg(long, default_value = "results/benchmarks")]
    pub out: PathBuf,
    /// Measure nothing: re-render a suite JSON written earlier (with `--compare`, as
    /// `suite-<backend>-vs-<reference>.md`).
    #[arg(long)]
    pub render: Option<PathBuf>,
    /// Internal: run one case (`shape:case[:batch]`) and print its JSON.
    #[arg(long, hide = true)]
    pub child: Option<String>,
}

/// `MemAvailable` of /proc/meminfo (Linux), MiB.
fn mem_available_mib() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Full fine-tuning's memory in f32 without activations: weights, gradients, two AdamW moments
/// and the new weights the update writes before the old ones are freed (20 bytes per parameter).
/// MiB.
fn full_finetune_mib(cfg: &LlamaConfig) -> f64 {
    param_count(cfg) as f64 * 20.0 / (1024.0 * 1024.0)
}

/// GPU memory used by process `pid` according to nvidia-smi, MiB.
fn gpu_mib(pid: u32) -> Option<f64> {
    let out = Command::new("nvidia-smi")
        .args([
            "--query-compute-apps=pid,used_memory",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let mut it = l.split(',').map(str::trim);
        (it.next()? == pid.to_string()).then(|| it.next()?.parse().ok())?
    })
}

fn device_name() -> String {
    if let Ok(o) = Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader"])
        .output()
        && o.status.success()
    {
        let s = String::from_utf8_lossy(&o.stdout).trim().to_string();
        if !s.is_empty() {
            return s;
        }
    }
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!(
        "{cpu} ({} threads)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    )
}

pub fn run(args: SuiteArgs) -> Result<()> {
    if let Some(spec) = args.child.clone() {
        let r = dispatch(
            args.backend,
            Child {
                spec,
                args: args.clone(),
            },
        )?;
        println!("SECVEC_CASE {}", serde_json::to_string(&r)?);
        return Ok(());
    }
    if let Some(path) = &args.render {
        let report: SuiteReport = serde_json::from_str(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("parsing {}", path.display()))?;
        let reference = load_reference(args.compare.as_deref())?;
        let stem = match &args.compare {
            Some(c) => format!(
                "suite-{}{}-vs-{}",
                report.backend,
                dtype_suffix(report.dtype.parse().unwrap_or_default()),
                c.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ),
            None => format!(
                "suite-{}{}",
                report.backend,
                dtype_suffix(report.dtype.parse().unwrap_or_default())
            ),
        };
        let md = markdown(&report, reference.as_ref(), args.peak_tflops);
        std::fs::create_dir_all(&args.out)?;
        let md_path = args.out.join(format!("{stem}.md"));
        std::fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
        println!("{md}");
        return Ok(());
    }
    for s in &args.shapes {
        shape(s)?;
    }
    let mut specs = Vec::new();
    for s in &args.shapes {
        for c in &args.cases {
            match c.as_str() {
                "generate" => {
                    for b in &args.gen_batches {
                        specs.push(format!("{s}:generate:{b}"));
                    }
                }
                "train-lora" | "train-lora-all" | "train-lora-sv" | "train-full" => {
                    specs.push(format!("{s}:{c}"))
                }
                other => {
                    bail!(
                        "--cases: unknown case `{other}` (train-lora, train-lora-all, \
                         train-lora-sv, train-full, generate)"
                    )
                }
            }
        }
    }
    let exe = std::env::current_exe().context("locating this binary")?;
    let mut results = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        // Full fine-tuning of a large shape can exceed a CPU machine's memory; the kernel's OOM
        // killer would then take this or another process. Skip it with the reason instead.
        let parts: Vec<&str> = spec.split(':').collect();
        if parts[1] == "train-full"
            && matches!(args.backend, BackendKind::Flex | BackendKind::Ndarray)
            && let Some(avail) = mem_available_mib()
        {
            let need = full_finetune_mib(&shape(parts[0])?);
            if need > 0.9 * avail {
                let msg = format!(
                    "skipped: needs ≈{:.0} GiB before activations (f32 weights, gradients, AdamW \
                     moments, updated weights), {:.0} GiB available",
                    need / 1024.0,
                    avail / 1024.0
                );
                eprintln!("[{}/{}] {spec}: {msg}", i + 1, specs.len());
                results.push(failed_case(parts[0], parts[1], args.train_batch, None, msg));
                continue;
            }
        }
        eprintln!(
            "[{}/{}] {spec} on {} ({})",
            i + 1,
            specs.len(),
            args.backend,
            args.dtype
        );
        let mut cmd = Command::new(&exe);
        cmd.arg("bench-suite")
            .args(["--backend", &args.backend.to_string()])
            .args(["--dtype", &args.dtype.to_string()])
            .args(["--child", spec])
            .args(["--prompt-tokens", &args.prompt_tokens.to_string()])
            .args(["--new-tokens", &args.new_tokens.to_string()])
            .args(["--train-batch", &args.train_batch.to_string()])
            .args(["--seq-len", &args.seq_len.to_string()])
            .args(["--steps", &args.steps.to_string()])
            .args(["--warmup-steps", &args.warmup_steps.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().context("starting a benchmark case")?;
        let pid = child.id();
        let start = Instant::now();
        let mut peak_gpu: Option<f64> = None;
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break Some(st);
            }
            if start.elapsed() > Duration::from_secs(args.case_timeout) {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            if let Some(m) = gpu_mib(pid) {
                peak_gpu = Some(peak_gpu.map_or(m, |p: f64| p.max(m)));
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        let mut stdout = String::new();
        if let Some(mut out) = child.stdout.take() {
            use std::io::Read;
            let _ = out.read_to_string(&mut stdout);
        }
        let parsed = stdout
            .lines()
            .find_map(|l| l.strip_prefix("SECVEC_CASE "))
            .and_then(|j| serde_json::from_str::<CaseResult>(j).ok());
        let r = match (status, parsed) {
            (Some(st), Some(mut r)) if st.success() => {
                r.peak_gpu_mib = peak_gpu;
                r
            }
            (status, _) => failed_case(
                parts[0],
                parts[1],
                parts
                    .get(2)
                    .and_then(|b| b.parse().ok())
                    .unwrap_or(args.train_batch),
                peak_gpu,
                match status {
                    None => format!("timed out after {} s", args.case_timeout),
                    Some(st) => format!("failed ({st})"),
                },
            ),
        };
        eprintln!(
            "    {:.1} tokens/s, warm-up {:.1}s{}",
            r.tokens_per_s,
            r.warmup_seconds,
            r.error
                .as_deref()
                .map(|e| format!(" — {e}"))
                .unwrap_or_default()
        );
        results.push(r);
    }
    let report = SuiteReport {
        tool: "secvec".into(),
        backend: args.backend.to_string(),
        dtype: args.dtype.to_string(),
        device: device_name(),
        command: format!(
            "secvec-experiments {}",
            std::env::args().skip(1).collect::<Vec<_>>().join(" ")
        ),
        results,
    };
    let reference = load_reference(args.compare.as_deref())?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let stem = format!("suite-{}{}", args.backend, dtype_suffix(args.dtype));
    let json = args.out.join(format!("{stem}.json"));
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let md = markdown(&report, reference.as_ref(), args.peak_tflops);
    let md_path = args.out.join(format!("{stem}.md"));
    std::fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
    println!("{md}");
    eprintln!("wrote {} and {}", json.display(), md_path.display());
    Ok(())
}

/// Parameters of a Llama shape, counted from the config (tied head counted once).
fn param_count(c: &LlamaConfig) -> usize {
    let (d, kv) = (c.hidden_size, c.num_kv_heads * c.head_dim);
    let q = c.num_heads * c.head_dim;
    let attn = d * q + 2 * d * kv + q * d;
    let mlp = 3 * d * c.intermediate_size;
    let layer = attn + mlp + 2 * d;
    let head = if c.tie_word_embeddings {
        0
    } else {
        c.vocab_size * d
    };
    c.vocab_size * d + c.num_layers * layer + d + head
}

#[cfg(test)]
mod tests {
    use burn::module::Module;
    use secvec_models::weights::random_llama;

    use super::*;

    #[test]
    fn shapes_have_the_published_parameter_counts() {
        // Hugging Face model cards: SmolLM2-135M 134,515,008; Llama-3.2-1B 1,235,814,400.
        assert_eq!(param_count(&shape("smollm2-135m").unwrap()), 134_515_008);
        assert_eq!(param_count(&shape("llama-1b").unwrap()), 1_235_814_400);
        let model = random_llama::<burn::backend::Flex>(
            &shape("smollm2-135m").unwrap(),
            0,
            &Default::default(),
        );
        assert_eq!(model.num_params(), 134_515_008);
        assert!(shape("gpt-5").is_err());
        // 20 bytes per parameter: 1B full fine-tuning needs ≥ 23 GiB before activations.
        let gib = |s| full_finetune_mib(&shape(s).unwrap()) / 1024.0;
        assert!(
            (gib("llama-1b") - 23.02).abs() < 0.01,
            "{}",
            gib("llama-1b")
        );
        assert!(
            (gib("smollm2-135m") - 2.51).abs() < 0.01,
            "{}",
            gib("smollm2-135m")
        );
    }
}
