//! `bench --what trainer`: the two places where burn-train's `Learner` would do the work of this
//! project's trainer, measured side by side in one process on the same model and gradients:
//!
//! - the optimizer step: burn-optim's `AdamW` (what the learner drives) against the trainer's
//!   fused AdamW (`secvec_core::train::optim`), same hyper-parameters, same gradients;
//! - the checkpoint: what burn-train's checkpointer writes (`model.clone().into_record()` and
//!   `optim.to_record()` through a file recorder, once per epoch; the full-precision
//!   `NamedMpkFileRecorder` here, no compression) against the trainer's mid-stage state
//!   (`secvec_core::train::resume`: the trainable weights and their moments, every N steps),
//!   timed between `on_step` and `on_eval`, which is where the trainer saves it.
//!
//! Both for a LoRA stage (r = 8 on the seven projections, as the alignment, the vectors and the
//! task LoRA train) and for full fine-tuning.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use secvec_core::adapter::{AdapterConfig, add_adapter, set_adapter_trainable, set_base_trainable};
use secvec_core::train::batch::make_batch;
use secvec_core::train::loss::response_nll_sum;
use secvec_core::train::optim::AdamW;
use secvec_core::train::phases::all_targets;
use secvec_core::train::{
    Checkpointing, TrainCallback, TrainConfig, TrainExample, train, trainable_params,
};
use secvec_models::Llama;
use serde::Serialize;

use crate::backend::BackendKind;
use crate::bench::{BenchArgs, dtype_suffix, median, peak_rss_mib, random_examples};

const BATCH: usize = 8;
const SEQ_LEN: usize = 64;

#[derive(Serialize)]
struct Case {
    case: String,
    trainable_params: usize,
    total_params: usize,
    /// Median seconds of one optimizer step (the update alone, gradients given).
    burn_optim_adamw_seconds: f64,
    secvec_adamw_seconds: f64,
    /// Seconds and bytes of one burn-train checkpoint: the model record and the optimizer
    /// record.
    burn_train_checkpoint_seconds: f64,
    burn_train_checkpoint_bytes: u64,
    /// Median seconds and bytes of one mid-stage save of the trainer.
    secvec_checkpoint_seconds: f64,
    secvec_checkpoint_bytes: u64,
}

#[derive(Serialize)]
struct Report {
    command: String,
    git_revision: String,
    model: String,
    backend: String,
    cpus: usize,
    batch: usize,
    seq_len: usize,
    steps: usize,
    cases: Vec<Case>,
    peak_rss_mib: Option<f64>,
}

/// Gradients of the mean next-token loss of `data` (every token after the first is a target).
fn gradients<B: AutodiffBackend>(model: &Llama<B>, data: &[TrainExample]) -> GradientsParams {
    let rows: Vec<&TrainExample> = data.iter().collect();
    let batch = make_batch::<B>(&rows, 0, &model.device());
    let tokens = data.iter().map(|e| e.n_target()).sum::<usize>() as f64;
    let loss = response_nll_sum(model, &batch).div_scalar(tokens);
    GradientsParams::from_grads(loss.backward(), model)
}

fn folder_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|it| {
            it.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Times the trainer's own saves: it saves right after `on_step` and before `on_eval`.
struct SaveTimer {
    dir: PathBuf,
    total: usize,
    after_step: Option<Instant>,
    seconds: Vec<f64>,
    bytes: u64,
}

impl<B: AutodiffBackend> TrainCallback<B> for SaveTimer {
    fn on_step(&mut self, _log: &secvec_core::train::StepLog) {
        self.after_step = Some(Instant::now());
    }
    fn on_eval(&mut self, step: usize, _model: &Llama<B>) -> secvec_core::Result<()> {
        // The last step saves nothing (the finished run removes its state instead).
        if let Some(t) = self.after_step.take()
            && step < self.total
        {
            self.seconds.push(t.elapsed().as_secs_f64());
            self.bytes = folder_bytes(&self.dir);
        }
        Ok(())
    }
}

fn one_case<B: AutodiffBackend>(
    mut model: Llama<B>,
    lora: bool,
    steps: usize,
    scratch: &Path,
) -> Result<Case> {
    let case = if lora {
        set_base_trainable(&mut model, false);
        let cfg = AdapterConfig {
            rank: 8,
            alpha: 16.0,
            targets: all_targets(),
            ..AdapterConfig::default()
        };
        add_adapter(&mut model, "task", &cfg)?;
        set_adapter_trainable(&mut model, "task", true)?;
        "LoRA r=8 on the 7 projections"
    } else {
        set_base_trainable(&mut model, true);
        "full fine-tuning"
    };
    let trainable_params = trainable_params(&model);
    let total_params = model.num_params();
    let data = random_examples(model.vocab_size(), BATCH, SEQ_LEN);
    let defaults = TrainConfig::default();
    let (beta1, beta2) = (defaults.beta1 as f32, defaults.beta2 as f32);
    let (eps, wd) = (defaults.adam_eps as f32, defaults.weight_decay as f32);

    // The optimizer step, interleaved, after one warm-up step each (which creates the moments).
    let mut burn_optim = AdamWConfig::new()
        .with_beta_1(beta1)
        .with_beta_2(beta2)
        .with_epsilon(eps)
        .with_weight_decay(wd)
        .init::<B, Llama<B>>();
    let mut ours = AdamW::new(beta1, beta2, eps, wd);
    let (mut t_burn, mut t_ours) = (Vec::new(), Vec::new());
    for i in 0..=steps {
        let grads = gradients(&model, &data);
        let t = Instant::now();
        model = burn_optim.step(1e-5, model, grads);
        let burn_s = t.elapsed().as_secs_f64();
        let grads = gradients(&model, &data);
        let t = Instant::now();
        model = ours.step(1e-5, model, grads, 1.0);
        let ours_s = t.elapsed().as_secs_f64();
        if i > 0 {
            t_burn.push(burn_s);
            t_ours.push(ours_s);
        }
        eprintln!("  [{case}] step {i}: burn-optim {burn_s:.3}s, secvec {ours_s:.3}s");
    }

    // burn-train's checkpoint: the whole model record and the optimizer's record.
    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    let base = scratch.join(if lora { "burn-lora" } else { "burn-full" });
    std::fs::create_dir_all(&base)?;
    let t = Instant::now();
    recorder
        .record(model.clone().into_record(), base.join("model"))
        .context("burn recorder: model")?;
    recorder
        .record(burn_optim.to_record(), base.join("optim"))
        .context("burn recorder: optimizer")?;
    let burn_ck_s = t.elapsed().as_secs_f64();
    let burn_ck_bytes = folder_bytes(&base);
    std::fs::remove_dir_all(&base).ok();

    // The trainer's mid-stage state, saved after every step of a short run.
    let dir = scratch.join(if lora { "secvec-lora" } else { "secvec-full" });
    let total = 4;
    let cfg = TrainConfig {
        lr: 1e-5,
        max_steps: Some(total),
        batch_size: BATCH,
        progress: false,
        eval_every: Some(1),
        checkpoint: Some(Checkpointing {
            dir: dir.clone(),
            every: 1,
        }),
        ..TrainConfig::default()
    };
    let mut timer = SaveTimer {
        dir,
        total,
        after_step: None,
        seconds: Vec::new(),
        bytes: 0,
    };
    train(model, &data, 0, &cfg, &mut timer)?;
    anyhow::ensure!(!timer.seconds.is_empty(), "the trainer saved no state");
    Ok(Case {
        case: case.to_string(),
        trainable_params,
        total_params,
        burn_optim_adamw_seconds: median(t_burn),
        secvec_adamw_seconds: median(t_ours),
        burn_train_checkpoint_seconds: burn_ck_s,
        burn_train_checkpoint_bytes: burn_ck_bytes,
        secvec_checkpoint_seconds: median(timer.seconds),
        secvec_checkpoint_bytes: timer.bytes,
    })
}

pub fn bench_trainer<B: AutodiffBackend>(
    args: &BenchArgs,
    device: B::Device,
    backend: BackendKind,
) -> Result<()> {
    let (source, loaded) = args.model.load::<B>(&device, backend)?;
    let scratch = args
        .out
        .join(format!(".trainer-scratch-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let cases = [true, false]
        .into_iter()
        .map(|lora| one_case::<B>(loaded.model.clone(), lora, args.steps, &scratch))
        .collect::<Result<Vec<_>>>();
    std::fs::remove_dir_all(&scratch).ok();
    let report = Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        git_revision: crate::experiment::record::git_revision(),
        model: source.display_name(),
        backend: backend.to_string(),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        batch: BATCH,
        seq_len: SEQ_LEN,
        steps: args.steps,
        cases: cases?,
        peak_rss_mib: peak_rss_mib(),
    };
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let mut md = format!(
        "# This trainer vs burn-train's learner: optimizer step and checkpoint\n\n\
         {} on {} ({} CPUs visible), revision {}.\n\nCommand: `{}`\n\n\
         Optimizer step: median of {} steps after one warm-up each, interleaved, on the gradients \
         of a batch of {} × {} random tokens. Checkpoint: burn-train writes the model record and \
         the optimizer record (full-precision NamedMpk, uncompressed) once per epoch; this trainer \
         writes the trainable weights and AdamW's moments every 25 steps (median of 3 saves).\n\n\
         | case | trainable / total params | AdamW step burn-optim | AdamW step secvec | ratio | \
         checkpoint burn-train | checkpoint secvec |\n|---|---:|---:|---:|---:|---:|---:|\n",
        report.model,
        report.backend,
        report.cpus,
        report.git_revision,
        report.command,
        report.steps,
        BATCH,
        SEQ_LEN
    );
    for c in &report.cases {
        md += &format!(
            "| {} | {:.2}M / {:.1}M | {:.3} s | {:.3} s | {:.1}× | {:.2} s, {:.0} MiB | {:.2} s, {:.1} MiB |\n",
            c.case,
            c.trainable_params as f64 / 1e6,
            c.total_params as f64 / 1e6,
            c.burn_optim_adamw_seconds,
            c.secvec_adamw_seconds,
            c.burn_optim_adamw_seconds / c.secvec_adamw_seconds.max(1e-9),
            c.burn_train_checkpoint_seconds,
            mib(c.burn_train_checkpoint_bytes),
            c.secvec_checkpoint_seconds,
            mib(c.secvec_checkpoint_bytes),
        );
    }
    if let Some(rss) = report.peak_rss_mib {
        md += &format!("\nPeak resident memory of the process: {rss:.0} MiB.\n");
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let stem = format!(
        "trainer-vs-burn-{backend}{}",
        dtype_suffix(args.model.dtype)
    );
    let json_path = args.out.join(format!("{stem}.json"));
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    std::fs::write(args.out.join(format!("{stem}.md")), &md)?;
    println!("{md}");
    Ok(())
}
