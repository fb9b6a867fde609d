//! `bench`: generation speed of a model — prefill tokens/s and greedy decoding tokens/s at
//! several batch sizes — written as JSON and a Markdown table.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::backend::{AutodiffBackend, Backend};
use secvec_models::attention::build_attention_mask;
use secvec_models::transformer::{int_tensor, positions_from_mask};
use secvec_models::{GenerationConfig, Message, Sampling, generate};
use serde::Serialize;

use crate::backend::{BackendKind, Job};
use crate::model_args::ModelArgs;
use secvec_core::train::TrainExample;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchKind {
    /// Prefill and greedy decoding.
    Generate,
    /// Training steps: LoRA r=8 on q,v (batch 8 × 64 tokens).
    TrainLora,
    /// Training steps: full fine-tuning (batch 8 × 64 tokens).
    TrainFull,
    /// This trainer against burn-train's learner where they differ: burn-optim's AdamW step vs
    /// the fused one, and burn-train's whole-model checkpoint vs the trainer's mid-stage state
    /// (LoRA and full fine-tuning) → trainer-vs-burn-<backend>.{json,md}.
    Trainer,
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// What to measure.
    #[arg(long, value_enum, default_value_t = BenchKind::Generate)]
    what: BenchKind,
    /// Timed training steps (after one warm-up step).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Batch sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    batch: Vec<usize>,
    /// New tokens per row (generation never stops early in the benchmark).
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    /// Timed repetitions per case (the median is reported), after one warm-up run.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Output directory.
    #[arg(long, default_value = "results/benchmarks")]
    pub out: PathBuf,
    /// A reference speed (new tokens/s at batch 1) to report the ratio against, with its source.
    #[arg(long)]
    reference_tokens_per_s: Option<f64>,
    #[arg(long, default_value = "")]
    reference_label: String,
}

#[derive(Serialize)]
struct Case {
    batch: usize,
    prompt_tokens: usize,
    new_tokens: usize,
    prefill_seconds: f64,
    prefill_tokens_per_s: f64,
    generate_seconds: f64,
    /// New tokens (all rows) per second of the whole `generate` call, prefill included.
    generate_new_tokens_per_s: f64,
    /// New tokens per second of the decoding steps alone (generate time minus prefill time).
    decode_tokens_per_s: f64,
}

#[derive(Serialize)]
struct Report {
    command: String,
    model: String,
    backend: String,
    dtype: String,
    cpus: usize,
    repeats: usize,
    cases: Vec<Case>,
    peak_rss_mib: Option<f64>,
    reference: Option<(String, f64)>,
}

/// `""` for f32 (the names results/ already uses), `-bf16` / `-f16` otherwise.
pub fn dtype_suffix(p: secvec_models::Precision) -> String {
    match p {
        secvec_models::Precision::F32 => String::new(),
        p => format!("-{p}"),
    }
}

/// Peak resident memory of this process (Linux), MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// The median (upper median for even lengths) of a non-empty list.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn prefill<B: Backend>(model: &secvec_models::Llama<B>, prompts: &[Vec<u32>]) -> f64 {
    let device = model.device();
    let valid: Vec<Vec<bool>> = prompts.iter().map(|p| vec![true; p.len()]).collect();
    let ids: Vec<Vec<i64>> = prompts
        .iter()
        .map(|p| p.iter().map(|&t| t as i64).collect())
        .collect();
    let t = Instant::now();
    let positions = int_tensor::<B>(&positions_from_mask(&valid, None), &device);
    let mask = build_attention_mask::<B>(prompts.len(), prompts[0].len(), 0, None, &device);
    let hidden = model.forward_hidden(int_tensor::<B>(&ids, &device), &positions, &mask, None);
    let seq = prompts[0].len();
    let logits = model.lm_head(hidden.narrow(1, seq - 1, 1));
    let _ = logits.into_data();
    t.elapsed().as_secs_f64()
}

impl Job for BenchArgs {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device, backend: BackendKind) -> Result<()> {
        if self.what == BenchKind::Trainer {
            return crate::bench_trainer::bench_trainer::<B>(&self, device, backend);
        }
        if self.what != BenchKind::Generate {
            return bench_train::<B>(&self, device, backend);
        }
        let (source, loaded) = self
            .model
            .load_for_inference::<B::InnerBackend>(&device, backend)?;
        let tok = &loaded.tokenizer;
        let prompt_text = tok.apply_chat_template(
            &[Message::user(
                "Explain in a few sentences why the sky looks blue during the day.",
            )],
            true,
        )?;
        let prompt = tok.encode(&prompt_text)?;
        let config = GenerationConfig {
            max_new_tokens: self.new_tokens,
            sampling: Sampling::Greedy,
            stop_tokens: vec![],
        };
        let pad = tok.pad_id();
        // Warm-up (allocations, kernel compilation on GPU backends).
        generate(
            &loaded.model,
            std::slice::from_ref(&prompt),
            pad,
            &GenerationConfig {
                max_new_tokens: 4,
                ..config.clone()
            },
        )?;
        let mut cases = Vec::new();
        for &batch in &self.batch {
            let prompts = vec![prompt.clone(); batch];
            let mut pre = Vec::new();
            let mut times = Vec::new();
            for r in 0..self.repeats.max(1) {
                pre.push(prefill(&loaded.model, &prompts));
                let t = Instant::now();
                let out = generate(&loaded.model, &prompts, pad, &config)?;
                times.push(t.elapsed().as_secs_f64());
                anyhow::ensure!(out.iter().all(|o| o.tokens.len() == self.new_tokens));
                eprintln!(
                    "batch {batch} run {}: prefill {:.3}s, generate {:.2}s",
                    r + 1,
                    pre[r],
                    times[r]
                );
            }
            let (p, g) = (median(pre), median(times));
            let new = (batch * self.new_tokens) as f64;
            cases.push(Case {
                batch,
                prompt_tokens: prompt.len(),
                new_tokens: self.new_tokens,
                prefill_seconds: p,
                prefill_tokens_per_s: (batch * prompt.len()) as f64 / p,
                generate_seconds: g,
                generate_new_tokens_per_s: new / g,
                decode_tokens_per_s: (batch * (self.new_tokens - 1)) as f64 / (g - p).max(1e-9),
            });
        }
        let report = Report {
            command: std::env::args().collect::<Vec<_>>().join(" "),
            model: source.display_name(),
            backend: backend.to_string(),
            dtype: self.model.dtype.to_string(),
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            repeats: self.repeats,
            cases,
            peak_rss_mib: peak_rss_mib(),
            reference: self
                .reference_tokens_per_s
                .map(|v| (self.reference_label.clone(), v)),
        };
        std::fs::create_dir_all(&self.out)
            .with_context(|| format!("creating {}", self.out.display()))?;
        let stem = format!("generation-{backend}{}", dtype_suffix(self.model.dtype));
        let json_path = self.out.join(format!("{stem}.json"));
        std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", json_path.display()))?;
        let md = markdown(&report);
        let md_path = self.out.join(format!("{stem}.md"));
        std::fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
        println!("{md}");
        eprintln!("wrote {} and {}", json_path.display(), md_path.display());
        Ok(())
    }
}

fn markdown(r: &Report) -> String {
    let mut s = format!(
        "# Generation benchmark: {} on {} ({}, {} CPUs visible)\n\nCommand: `{}`\n\n\
         Median of {} runs after a warm-up; greedy decoding, no early stop.\n\n\
         | batch | prompt tokens | new tokens/row | prefill tokens/s | generate new tokens/s (incl. prefill) | decode tokens/s |\n\
         |---:|---:|---:|---:|---:|---:|\n",
        r.model, r.backend, r.dtype, r.cpus, r.command, r.repeats
    );
    for c in &r.cases {
        s += &format!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} |\n",
            c.batch,
            c.prompt_tokens,
            c.new_tokens,
            c.prefill_tokens_per_s,
            c.generate_new_tokens_per_s,
            c.decode_tokens_per_s
        );
    }
    if let Some(rss) = r.peak_rss_mib {
        s += &format!("\nPeak resident memory of the process: {rss:.0} MiB.\n");
    }
    if let (Some((label, v)), Some(c)) = (&r.reference, r.cases.iter().find(|c| c.batch == 1)) {
        s += &format!(
            "\nReference (batch 1): {v:.1} new tokens/s — {label}. Ratio: {:.2}×.\n",
            c.generate_new_tokens_per_s / v
        );
    }
    s
}

#[derive(Serialize)]
struct TrainBench {
    command: String,
    model: String,
    backend: String,
    dtype: String,
    case: String,
    cpus: usize,
    batch: usize,
    seq_len: usize,
    steps: usize,
    warmup_seconds: f64,
    seconds_per_step: Vec<f64>,
    tokens_per_s: f64,
    total_params: usize,
    peak_rss_mib: Option<f64>,
}

/// `batch` fixed random token sequences of `seq_len` (seed 0), every token after the first a
/// target: the training benchmarks' data.
pub fn random_examples(vocab: usize, batch: usize, seq_len: usize) -> Vec<TrainExample> {
    use rand::{Rng, SeedableRng, rngs::StdRng};
    let mut rng = StdRng::seed_from_u64(0);
    (0..batch)
        .map(|_| TrainExample {
            ids: (0..seq_len)
                .map(|_| rng.random_range(3..vocab as u32))
                .collect(),
            n_prompt: 1,
        })
        .collect()
}

/// Training throughput: fixed random token sequences, loss on every next token.
fn bench_train<B: AutodiffBackend>(
    args: &BenchArgs,
    device: B::Device,
    backend: BackendKind,
) -> Result<()> {
    use burn::module::Module;
    use secvec_core::adapter::{
        AdapterConfig, add_adapter, set_adapter_trainable, set_base_trainable,
    };
    use secvec_core::train::{NoCallback, TrainConfig, train};

    let (source, loaded) = args.model.load::<B>(&device, backend)?;
    let mut model = loaded.model;
    let (batch, seq_len) = (8, 64);
    let case = match args.what {
        BenchKind::TrainLora => {
            set_base_trainable(&mut model, false);
            let cfg = AdapterConfig {
                rank: 8,
                alpha: 16.0,
                targets: vec!["q_proj".into(), "v_proj".into()],
                ..AdapterConfig::default()
            };
            add_adapter(&mut model, "task", &cfg)?;
            set_adapter_trainable(&mut model, "task", true)?;
            "LoRA r=8 on q_proj, v_proj"
        }
        _ => {
            set_base_trainable(&mut model, true);
            "full fine-tuning"
        }
    };
    let total_params = model.num_params();
    let data = random_examples(model.vocab_size(), batch, seq_len);
    let cfg = |steps| TrainConfig {
        lr: 1e-5,
        max_steps: Some(steps),
        batch_size: batch,
        progress: false,
        ..TrainConfig::default()
    };
    let t = Instant::now();
    let (model, _) = train(model, &data, 0, &cfg(1), &mut NoCallback)?;
    let warmup = t.elapsed().as_secs_f64();
    let (_, report) = train(model, &data, 0, &cfg(args.steps), &mut NoCallback)?;
    let secs: Vec<f64> = report.steps.iter().map(|s| s.seconds).collect();
    let med = median(secs.clone());
    let r = TrainBench {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        model: source.display_name(),
        backend: backend.to_string(),
        dtype: args.model.dtype.to_string(),
        case: case.to_string(),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        batch,
        seq_len,
        steps: args.steps,
        warmup_seconds: warmup,
        seconds_per_step: secs,
        tokens_per_s: (batch * seq_len) as f64 / med,
        total_params,
        peak_rss_mib: peak_rss_mib(),
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let stem = format!(
        "train-{}-{backend}{}",
        if args.what == BenchKind::TrainLora {
            "lora"
        } else {
            "full"
        },
        dtype_suffix(args.model.dtype)
    );
    let mut md = format!(
        "# Training benchmark: {} on {} ({}, {} CPUs visible)\n\nCommand: `{}`\n\n{} — batch {} × {} tokens, \
         median of {} steps after one warm-up step ({:.1}s).\n\n| tokens/s | s/step | peak RSS MiB |\n|---:|---:|---:|\n| {:.0} | {:.2} | {:.0} |\n",
        r.model,
        r.backend,
        r.dtype,
        r.cpus,
        r.command,
        r.case,
        batch,
        seq_len,
        r.steps,
        r.warmup_seconds,
        r.tokens_per_s,
        med,
        r.peak_rss_mib.unwrap_or(f64::NAN)
    );
    if let Some(v) = args.reference_tokens_per_s {
        md += &format!(
            "\nReference: {v:.0} tokens/s — {}. Ratio: {:.2}×.\n",
            args.reference_label,
            r.tokens_per_s / v
        );
    }
    std::fs::write(
        args.out.join(format!("{stem}.json")),
        serde_json::to_string_pretty(&r)?,
    )?;
    std::fs::write(args.out.join(format!("{stem}.md")), &md)?;
    println!("{md}");
    Ok(())
}
