//! One case of the suite, measured inside its own child process: a training run of a few steps
//! or one generate call, timed after a warm-up step.

use std::time::Instant;

use anyhow::{Result, bail};
use burn::module::Module;
use burn::tensor::backend::AutodiffBackend;
use rand::{Rng, SeedableRng, rngs::StdRng};

use secvec_core::adapter::{
    AdapterConfig, SECURITY, TASK, add_adapter, set_adapter_trainable, set_base_trainable,
};
use secvec_core::train::phases::all_targets;
use secvec_core::train::{NoCallback, TrainConfig, TrainExample, train, trainable_params};
use secvec_models::weights::random_llama;
use secvec_models::{GenerationConfig, LlamaConfig, Sampling, generate};

use super::{CaseResult, SuiteArgs, shape};
use crate::backend::{BackendKind, Job};
use crate::bench::{median, peak_rss_mib};

/// Model FLOPs per trained token: 6·N for full fine-tuning (forward, input and weight
/// gradients), 4·N with a frozen base (no weight gradients), plus attention 12·L·d·T (6·...·T for
/// the forward+backward of QKᵀ and AV at context T, halved for causal masking is ignored here).
fn train_flops_per_token(cfg: &LlamaConfig, params: usize, full: bool, seq: usize) -> f64 {
    let n = params as f64;
    let attn = 12.0 * cfg.num_layers as f64 * cfg.hidden_size as f64 * seq as f64;
    if full {
        6.0 * n + attn
    } else {
        4.0 * n + attn * 2.0 / 3.0
    }
}

pub(super) struct Child {
    pub(super) spec: String,
    pub(super) args: SuiteArgs,
}

impl Job for Child {
    type Output = CaseResult;

    fn run<B: AutodiffBackend>(
        self,
        device: B::Device,
        _backend: BackendKind,
    ) -> Result<CaseResult> {
        let parts: Vec<&str> = self.spec.split(':').collect();
        let (shape_name, case) = (parts[0], parts[1]);
        let cfg = shape(shape_name)?;
        let a = &self.args;
        secvec_models::precision::probe::<B>(a.dtype, &device).map_err(anyhow::Error::msg)?;
        let mut rng = StdRng::seed_from_u64(0);
        let vocab = cfg.vocab_size as u32;
        if case == "generate" {
            let batch: usize = parts.get(2).and_then(|b| b.parse().ok()).unwrap_or(1);
            // Inference: weights stored in the compute dtype, as the torch reference converts the
            // model with `.to(bfloat16)` for generation.
            let model = random_llama::<B::InnerBackend>(&cfg, 0, &device)
                .with_precision(a.dtype)
                .with_half_weights();
            let params = model.num_params();
            let prompts: Vec<Vec<u32>> = (0..batch)
                .map(|_| {
                    (0..a.prompt_tokens)
                        .map(|_| rng.random_range(3..vocab))
                        .collect()
                })
                .collect();
            let gc = GenerationConfig {
                max_new_tokens: a.new_tokens,
                sampling: Sampling::Greedy,
                stop_tokens: vec![],
            };
            let t = Instant::now();
            generate(&model, &prompts, 0, &gc)?;
            let warmup = t.elapsed().as_secs_f64();
            let mut times = Vec::new();
            for _ in 0..3 {
                let t = Instant::now();
                let out = generate(&model, &prompts, 0, &gc)?;
                times.push(t.elapsed().as_secs_f64());
                anyhow::ensure!(out.iter().all(|o| o.tokens.len() == a.new_tokens));
            }
            let secs = median(times);
            let tps = (batch * a.new_tokens) as f64 / secs;
            return Ok(CaseResult {
                shape: shape_name.into(),
                case: case.into(),
                batch,
                tokens_per_s: tps,
                warmup_seconds: warmup,
                seconds: secs,
                params,
                trainable_params: 0,
                // Decoding: 2·N per new token (the prompt's prefill is not counted).
                model_tflops: Some(2.0 * params as f64 * tps / 1e12),
                peak_host_mib: peak_rss_mib(),
                peak_gpu_mib: None,
                error: None,
            });
        }
        let mut model = random_llama::<B>(&cfg, 0, &device).with_precision(a.dtype);
        let params = model.num_params();
        // LoRA r8 (alpha 16) as the `task` adapter: on q and v, or on all seven projections as
        // the headline's attack adapts them; `train-lora-sv` adds frozen, active security vectors
        // on the same seven (the headline's attack with vectors).
        let lora = |targets: Vec<String>| AdapterConfig {
            rank: 8,
            alpha: 16.0,
            targets,
            ..AdapterConfig::default()
        };
        let full = match case {
            "train-lora" | "train-lora-all" | "train-lora-sv" => {
                set_base_trainable(&mut model, false);
                if case == "train-lora-sv" {
                    add_adapter(&mut model, SECURITY, &lora(all_targets()))?;
                    set_adapter_trainable(&mut model, SECURITY, false)?;
                }
                let targets = if case == "train-lora" {
                    vec!["q_proj".into(), "v_proj".into()]
                } else {
                    all_targets()
                };
                add_adapter(&mut model, TASK, &lora(targets))?;
                set_adapter_trainable(&mut model, TASK, true)?;
                false
            }
            "train-full" => {
                set_base_trainable(&mut model, true);
                true
            }
            other => bail!("unknown case `{other}`"),
        };
        let trainable = trainable_params(&model);
        let data: Vec<TrainExample> = (0..a.train_batch)
            .map(|_| TrainExample {
                ids: (0..a.seq_len).map(|_| rng.random_range(3..vocab)).collect(),
                n_prompt: 1,
            })
            .collect();
        let tc = |steps| TrainConfig {
            lr: 1e-5,
            max_steps: Some(steps),
            batch_size: a.train_batch,
            max_len: a.seq_len,
            progress: false,
            ..TrainConfig::default()
        };
        let t = Instant::now();
        let (model, _) = train(model, &data, 0, &tc(a.warmup_steps.max(1)), &mut NoCallback)?;
        let warmup = t.elapsed().as_secs_f64();
        let (_, report) = train(model, &data, 0, &tc(a.steps.max(1)), &mut NoCallback)?;
        let secs = median(report.steps.iter().map(|s| s.seconds).collect());
        let tps = (a.train_batch * a.seq_len) as f64 / secs;
        Ok(CaseResult {
            shape: shape_name.into(),
            case: case.into(),
            batch: a.train_batch,
            tokens_per_s: tps,
            warmup_seconds: warmup,
            seconds: secs,
            params,
            trainable_params: trainable,
            model_tflops: Some(train_flops_per_token(&cfg, params, full, a.seq_len) * tps / 1e12),
            peak_host_mib: peak_rss_mib(),
            peak_gpu_mib: None,
            error: None,
        })
    }
}

/// A case that did not produce a measurement.
pub(super) fn failed_case(
    shape: &str,
    case: &str,
    batch: usize,
    peak_gpu_mib: Option<f64>,
    error: String,
) -> CaseResult {
    CaseResult {
        shape: shape.into(),
        case: case.into(),
        batch,
        tokens_per_s: 0.0,
        warmup_seconds: 0.0,
        seconds: 0.0,
        params: 0,
        trainable_params: 0,
        model_tflops: None,
        peak_host_mib: None,
        peak_gpu_mib,
        error: Some(error),
    }
}
