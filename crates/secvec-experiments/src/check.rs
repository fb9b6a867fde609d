//! `check`: the correctness checks that matter on a (GPU) backend, runnable where `cargo test`
//! is not (a GPU machine with a prebuilt binary): logits and greedy tokens of the tiny Hugging Face
//! fixtures against transformers' references, logits of a SmolLM2-shaped random model against the
//! f32 CPU backend (flex), and a short security-vector training whose losses must follow the CPU
//! run's. Writes `<out>/check-<backend>.{json,md}`; exits non-zero when a check fails.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use serde::Serialize;

use secvec_core::adapter::AdapterConfig;
use secvec_core::data::{Corpus, Split};
use secvec_core::train::{
    NoCallback, SecurityVectorConfig, TextPair, TrainConfig, encode_pairs, train_security_vectors,
};
use secvec_models::loader::load_hf_dir;
use secvec_models::weights::random_llama;
use secvec_models::{GenerationConfig, Llama, Precision, Sampling, generate};

use crate::backend::{BackendKind, Job, dispatch};
use crate::bench_suite::shape;

#[derive(clap::Args, Debug, Clone)]
pub struct CheckArgs {
    /// The backend to check (against flex, the f32 CPU reference).
    #[arg(long, value_enum, default_value_t = BackendKind::Flex)]
    pub backend: BackendKind,
    /// The fixtures folder (tests/fixtures of the repository).
    #[arg(long, default_value = "tests/fixtures")]
    pub fixtures: PathBuf,
    /// Relative tolerance on logits (GPU matmuls may use TF32 or another summation order).
    #[arg(long, default_value_t = 2e-3)]
    pub tol: f64,
    /// Training steps of the security-vector check.
    #[arg(long, default_value_t = 8)]
    pub train_steps: usize,
    /// Half precisions to check against this backend's own f32 results (logits of the
    /// SmolLM2-shaped model and the security-vector losses); empty to skip.
    #[arg(long, value_delimiter = ',', default_value = "bf16,f16")]
    pub dtypes: Vec<Precision>,
    #[arg(long, default_value = "results/benchmarks")]
    pub out: PathBuf,
}

#[derive(Serialize, Clone)]
pub struct CheckResult {
    pub name: String,
    pub passed: bool,
    pub detail: String,
    pub seconds: f64,
}

fn logits<B: Backend>(model: &Llama<B>, ids: &[Vec<u32>]) -> Vec<f32> {
    let device = model.device();
    let flat: Vec<i64> = ids.iter().flatten().map(|&i| i as i64).collect();
    let input =
        Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [ids.len(), ids[0].len()]), &device);
    model
        .forward(input)
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("f32 logits")
}

/// Largest |a − b| relative to the largest |b|.
fn rel_diff(a: &[f32], b: &[f32]) -> f64 {
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6) as f64;
    a.iter()
        .zip(b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs() as f64))
        / scale
}

fn argmax_rows(flat: &[f32], vocab: usize) -> Vec<usize> {
    flat.chunks(vocab)
        .map(secvec_models::sampling::argmax)
        .collect()
}

/// Step losses of a short security-vector training on the tiny Llama fixture.
fn sv_losses<B: AutodiffBackend>(
    dir: &Path,
    steps: usize,
    precision: Precision,
    device: &B::Device,
) -> Result<Vec<f64>> {
    let mut loaded = load_hf_dir::<B>(dir, device)?;
    loaded.model = loaded.model.with_precision(precision);
    let corpus = Corpus::builtin(0);
    let pairs: Vec<TextPair> = corpus
        .split(Split::Sv)
        .iter()
        .take(16)
        .map(|s| TextPair::new(&s.prompt, &s.response))
        .collect();
    let examples = encode_pairs(&loaded.tokenizer, &pairs, None, 48)?;
    let cfg = SecurityVectorConfig {
        adapter: AdapterConfig {
            rank: 8,
            alpha: 16.0,
            targets: secvec_core::train::phases::all_targets(),
            seed: 7,
            ..AdapterConfig::default()
        },
        train: TrainConfig {
            lr: 1e-2,
            max_steps: Some(steps),
            batch_size: 4,
            max_len: 48,
            seed: 0,
            progress: false,
            ..TrainConfig::default()
        },
    };
    let (_, report) = train_security_vectors(
        loaded.model,
        &examples,
        loaded.tokenizer.pad_id(),
        &cfg,
        &mut NoCallback,
    )?;
    Ok(report.steps.iter().map(|s| s.loss).collect())
}

struct Checks {
    args: CheckArgs,
    /// Reference values from the CPU run: random-model logits and SV losses.
    cpu: Option<(Vec<f32>, Vec<f64>)>,
}

impl Job for Checks {
    type Output = (Vec<CheckResult>, (Vec<f32>, Vec<f64>));

    fn run<B: AutodiffBackend>(
        self,
        device: B::Device,
        _backend: BackendKind,
    ) -> Result<Self::Output> {
        let mut out = Vec::new();
        let a = &self.args;
        let mut push = |name: &str, t: Instant, r: Result<String, String>| {
            let (passed, detail) = match r {
                Ok(d) => (true, d),
                Err(d) => (false, d),
            };
            eprintln!(
                "  {} {name}: {detail}",
                if passed { "ok  " } else { "FAIL" }
            );
            out.push(CheckResult {
                name: name.into(),
                passed,
                detail,
                seconds: t.elapsed().as_secs_f64(),
            });
        };

        // 1. Tiny HF checkpoints against transformers.
        for fixture in ["tiny-llama-bf16", "tiny-qwen2-f16"] {
            let t = Instant::now();
            let dir = a.fixtures.join(fixture);
            let model = load_hf_dir::<B::InnerBackend>(&dir, &device)
                .with_context(|| format!("loading {}", dir.display()))?;
            let reference = reference_json(&dir.join("reference.json"))?;
            let vocab = model.model.vocab_size();
            let mut worst = 0f64;
            let mut problems = Vec::new();
            for row in reference["rows"].as_array().context("reference rows")? {
                let ids = model
                    .tokenizer
                    .encode(row["text"].as_str().unwrap_or_default())?;
                let l = logits(&model.model, std::slice::from_ref(&ids));
                let last = &l[(ids.len() - 1) * vocab..(ids.len() - 1) * vocab + 16];
                worst = worst.max(rel_diff(&l[..16], &f32s(row, "logits_first_pos_first16")?));
                worst = worst.max(rel_diff(last, &f32s(row, "logits_last_pos_first16")?));
                let am: Vec<u32> = argmax_rows(&l, vocab).iter().map(|&x| x as u32).collect();
                let greedy = u32s(row, "greedy_8")?;
                if am != u32s(row, "argmax_per_pos")? {
                    problems.push("argmax differs".to_string());
                }
                let g = generate(
                    &model.model,
                    std::slice::from_ref(&ids),
                    model.tokenizer.pad_id(),
                    &GenerationConfig {
                        max_new_tokens: 8,
                        sampling: Sampling::Greedy,
                        stop_tokens: model.tokenizer.special.eos.clone(),
                    },
                )?;
                if g[0].tokens != greedy {
                    problems.push(format!("greedy_8 {:?} ≠ {greedy:?}", g[0].tokens));
                }
            }
            let detail = format!("max relative logit difference vs transformers {worst:.2e}");
            push(
                &format!("{fixture} vs transformers"),
                t,
                if worst <= a.tol && problems.is_empty() {
                    Ok(detail)
                } else {
                    Err(format!("{detail}; {}", problems.join("; ")))
                },
            );
        }

        // 2. SmolLM2's shape, random weights, batch 2 × 48.
        let t = Instant::now();
        let cfg = shape("smollm2-135m")?;
        let model = random_llama::<B::InnerBackend>(&cfg, 0, &device);
        let ids: Vec<Vec<u32>> = (0..2u32)
            .map(|r| {
                (0..48u32)
                    .map(|i| (r * 7919 + i * 104_729) % 49_000 + 3)
                    .collect()
            })
            .collect();
        let l = logits(&model, &ids);
        match &self.cpu {
            Some((cpu_logits, _)) => {
                let d = rel_diff(&l, cpu_logits);
                let (am, cm) = (
                    argmax_rows(&l, cfg.vocab_size),
                    argmax_rows(cpu_logits, cfg.vocab_size),
                );
                let agree =
                    am.iter().zip(&cm).filter(|(x, y)| x == y).count() as f64 / am.len() as f64;
                let detail = format!(
                    "max relative logit difference vs flex {d:.2e}; argmax agreement {:.1}%",
                    100.0 * agree
                );
                push(
                    "smollm2-135m shape (random) vs flex",
                    t,
                    if d <= a.tol && agree >= 0.95 {
                        Ok(detail)
                    } else {
                        Err(detail)
                    },
                );
            }
            None => push(
                "smollm2-135m shape (random) logits",
                t,
                Ok("computed (this is the reference run)".into()),
            ),
        }

        // 3. Short security-vector training on the tiny Llama.
        let t = Instant::now();
        let sv_dir = a.fixtures.join("tiny-llama-bf16");
        let losses = sv_losses::<B>(&sv_dir, a.train_steps, Precision::F32, &device)?;
        let (first, last) = (losses[0], *losses.last().unwrap_or(&f64::NAN));
        let mut detail = format!("loss {first:.4} → {last:.4} over {} steps", losses.len());
        let mut ok = last < first && losses.iter().all(|l| l.is_finite());
        if let Some((_, cpu_losses)) = &self.cpu {
            let worst = losses
                .iter()
                .zip(cpu_losses)
                .fold(0f64, |m, (x, y)| m.max((x - y).abs() / y.abs().max(1e-6)));
            detail += &format!("; max relative difference vs flex per step {worst:.2e}");
            ok &= worst <= 10.0 * a.tol;
        }
        push(
            "security-vector training",
            t,
            if ok { Ok(detail) } else { Err(detail) },
        );

        // 4. Mixed precision against this backend's f32: the SmolLM2-shaped logits and the
        //    security-vector losses. Flex measures logits 1.3e-2 (bf16) and 1.4e-3 (f16), losses
        //    1.2e-4 and 4.6e-4; the logit bounds are 2–4× that, the loss bounds wider (a GPU sums
        //    in another order and its half kernels may round differently).
        for &p in &a.dtypes {
            let t = Instant::now();
            if let Err(e) = secvec_models::precision::probe::<B>(p, &device) {
                push(&format!("{p} mixed precision"), t, Err(e));
                continue;
            }
            let (logit_tol, loss_tol) = match p {
                Precision::Bf16 => (3e-2, 5e-3),
                _ => (5e-3, 2e-3),
            };
            let half = logits(&model.clone().with_precision(p), &ids);
            let d = rel_diff(&half, &l);
            let (am, fm) = (
                argmax_rows(&half, cfg.vocab_size),
                argmax_rows(&l, cfg.vocab_size),
            );
            let agree = am.iter().zip(&fm).filter(|(x, y)| x == y).count() as f64 / am.len() as f64;
            let detail = format!(
                "max relative logit difference vs {} f32 {d:.2e} (bound {logit_tol:.0e}); \
                 argmax agreement {:.1}%",
                a.backend,
                100.0 * agree
            );
            push(
                &format!("smollm2-135m shape (random), {p} vs f32"),
                t,
                if d > 0.0 && d <= logit_tol && agree >= 0.9 {
                    Ok(detail)
                } else {
                    Err(detail)
                },
            );
            let t = Instant::now();
            let half_losses = sv_losses::<B>(&sv_dir, a.train_steps, p, &device)?;
            let worst = half_losses
                .iter()
                .zip(&losses)
                .fold(0f64, |m, (x, y)| m.max((x - y).abs() / y.abs().max(1e-6)));
            let (hf, hl) = (half_losses[0], *half_losses.last().unwrap_or(&f64::NAN));
            let detail = format!(
                "loss {hf:.4} → {hl:.4}; max relative difference vs f32 per step {worst:.2e} \
                 (bound {loss_tol:.0e})"
            );
            push(
                &format!("security-vector training, {p}"),
                t,
                if hl < hf && worst <= loss_tol {
                    Ok(detail)
                } else {
                    Err(detail)
                },
            );
        }
        Ok((out, (l, losses)))
    }
}

pub fn run(args: CheckArgs) -> Result<()> {
    if !args
        .fixtures
        .join("tiny-llama-bf16/reference.json")
        .is_file()
    {
        bail!(
            "{} does not hold the test fixtures (run from the repository root or pass --fixtures)",
            args.fixtures.display()
        );
    }
    let started = Instant::now();
    let cpu = if args.backend == BackendKind::Flex {
        None
    } else {
        eprintln!("reference run on flex (f32 CPU):");
        let (_, reference) = dispatch(
            BackendKind::Flex,
            Checks {
                args: args.clone(),
                cpu: None,
            },
        )
        .context("the flex reference run (build with the default features)")?;
        Some(reference)
    };
    eprintln!("checks on {}:", args.backend);
    let t = Instant::now();
    let (results, _) = dispatch(
        args.backend,
        Checks {
            args: args.clone(),
            cpu,
        },
    )?;
    let backend_seconds = t.elapsed().as_secs_f64();
    let failed = results.iter().filter(|r| !r.passed).count();
    let mut md = format!(
        "# Correctness checks on {}\n\nCommand: `secvec-experiments {}`\n\n{} of {} checks passed; {:.0} s on {} \
         (the first checks include kernel compilation), {:.0} s in all.\n\n| check | result | detail | seconds |\n|---|---|---|---:|\n",
        args.backend,
        std::env::args().skip(1).collect::<Vec<_>>().join(" "),
        results.len() - failed,
        results.len(),
        backend_seconds,
        args.backend,
        started.elapsed().as_secs_f64()
    );
    for r in &results {
        md += &format!(
            "| {} | {} | {} | {:.1} |\n",
            r.name,
            if r.passed { "pass" } else { "**FAIL**" },
            r.detail,
            r.seconds
        );
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let stem = args.out.join(format!("check-{}", args.backend));
    std::fs::write(
        stem.with_extension("json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    std::fs::write(stem.with_extension("md"), &md)?;
    println!("{md}");
    if failed > 0 {
        bail!("{failed} check(s) failed on {}", args.backend);
    }
    Ok(())
}

/// A reference file as JSON; the error names the file.
fn reference_json(path: &Path) -> Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The numbers of the array `row[key]`; the error names the field.
fn numbers<T>(
    row: &serde_json::Value,
    key: &str,
    convert: fn(&serde_json::Value) -> Option<T>,
) -> Result<Vec<T>> {
    row[key]
        .as_array()
        .with_context(|| format!("reference row: `{key}` is not an array"))?
        .iter()
        .map(|x| convert(x).with_context(|| format!("reference row: `{key}` holds {x}")))
        .collect()
}

fn f32s(row: &serde_json::Value, key: &str) -> Result<Vec<f32>> {
    numbers(row, key, |x| x.as_f64().map(|v| v as f32))
}

fn u32s(row: &serde_json::Value, key: &str) -> Result<Vec<u32>> {
    numbers(row, key, |x| x.as_u64().and_then(|v| u32::try_from(v).ok()))
}
