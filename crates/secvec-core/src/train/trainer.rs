//! The training loop: token-weighted gradient accumulation, global-norm clipping, AdamW with
//! warm-up and decay, non-finite detection, progress bar and callbacks.

use std::borrow::Cow;
use std::time::Instant;

use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::ElementConversion;
use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
use serde::{Deserialize, Serialize};

use secvec_models::Llama;

use super::batch::{TrainExample, make_batch};
use super::config::{LossScaleConfig, TrainConfig};
use super::loss::response_nll_sum;
use super::optim::{AdamW, global_grad_norm};
use super::resume::{self, TrainState};
use crate::defence::{Defence, lisa};
use crate::error::{CoreError, Result};
use crate::train::phases::set_security_vectors;

/// Offset of the alignment data's shuffle seed from the run's (Lisa), so that its order is not
/// the user's data's.
const GUIDE_SEED_OFFSET: u64 = 0x115a_0b57;

/// What one optimizer step did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepLog {
    pub step: usize,
    pub epoch: usize,
    /// Mean NLL per trained token of this step's examples.
    pub loss: f64,
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Real input tokens processed in this step.
    pub tokens: usize,
    pub seconds: f64,
    /// f16 only: the loss scale this step's backward pass used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f64>,
    /// f16 only: the gradients overflowed at this scale and the update was skipped (the
    /// learning-rate schedule still advances, as with PyTorch's `GradScaler`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
    /// Lisa only: this step trained on the defender's alignment data, not the user's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub aligning: bool,
    /// Lisa only: the squared drift `‖w − w̃‖²` from the last switch of state, when this step's
    /// loss carried the proximal term `ρ/2 · ‖w − w̃‖²` (not included in `loss`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<f64>,
}

/// Summary of a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct TrainReport {
    pub steps: Vec<StepLog>,
    pub seconds: f64,
    pub tokens: usize,
    pub tokens_per_second: f64,
    /// Optimizer steps skipped because f16 gradients overflowed (0 outside f16).
    #[serde(default)]
    pub skipped_steps: usize,
}

impl TrainReport {
    /// Mean loss of the last `n` steps.
    pub fn final_loss(&self, n: usize) -> f64 {
        let tail = &self.steps[self.steps.len().saturating_sub(n)..];
        tail.iter().map(|s| s.loss).sum::<f64>() / tail.len().max(1) as f64
    }
}

/// Hooks into a training run.
pub trait TrainCallback<B: AutodiffBackend> {
    /// After every optimizer step.
    fn on_step(&mut self, _log: &StepLog) {}
    /// Every `eval_every` steps, with the current model; an error stops training.
    fn on_eval(&mut self, _step: usize, _model: &Llama<B>) -> Result<()> {
        Ok(())
    }
}

/// A callback that does nothing.
pub struct NoCallback;
impl<B: AutodiffBackend> TrainCallback<B> for NoCallback {}

/// Dynamic loss-scale state (see [`LossScaleConfig`]).
struct LossScaler {
    scale: f64,
    good_steps: usize,
    skips_in_a_row: usize,
    cfg: LossScaleConfig,
}

impl LossScaler {
    fn new(cfg: &LossScaleConfig) -> Self {
        Self {
            scale: cfg.init,
            good_steps: 0,
            skips_in_a_row: 0,
            cfg: cfg.clone(),
        }
    }

    /// After a step with finite gradients.
    fn finite(&mut self) {
        self.skips_in_a_row = 0;
        self.good_steps += 1;
        if self.good_steps == self.cfg.growth_interval {
            self.scale *= 2.0;
            self.good_steps = 0;
        }
    }

    /// After a step whose gradients overflowed; an error once that has happened too often in a
    /// row.
    fn overflowed(&mut self) -> std::result::Result<(), String> {
        self.skips_in_a_row += 1;
        self.good_steps = 0;
        if self.skips_in_a_row >= self.cfg.max_consecutive_skips {
            return Err(format!(
                "f16 gradients in {} steps in a row, down to loss scale {:e} (train in bf16, or \
                 lower the learning rate)",
                self.skips_in_a_row, self.scale
            ));
        }
        self.scale *= 0.5;
        Ok(())
    }
}

/// Trains the parameters of `model` that require gradients on `examples`. Frozen parameters
/// (`require_grad = false`) get no gradient and stay bit-identical.
pub fn train<B: AutodiffBackend>(
    model: Llama<B>,
    examples: &[TrainExample],
    pad_id: u32,
    cfg: &TrainConfig,
    callback: &mut dyn TrainCallback<B>,
) -> Result<(Llama<B>, TrainReport)> {
    train_with(model, examples, pad_id, cfg, &Defence::None, callback)
}

/// Sequences longer than `max_len` lose their end (usually encoded to fit already, by
/// `encode_pairs`).
fn fit(examples: &[TrainExample], max_len: usize) -> Vec<Cow<'_, TrainExample>> {
    examples
        .iter()
        .map(|e| {
            if e.ids.len() <= max_len {
                Cow::Borrowed(e)
            } else {
                Cow::Owned(TrainExample {
                    ids: e.ids[..max_len].to_vec(),
                    n_prompt: e.n_prompt.min(max_len),
                })
            }
        })
        .collect()
}

/// The examples left with a response token (the others are not trained on).
fn trainable<'a>(fitted: &'a [Cow<'_, TrainExample>]) -> Vec<&'a TrainExample> {
    fitted
        .iter()
        .map(|e| e.as_ref())
        .filter(|e| e.n_target() > 0)
        .collect()
}

/// [`train`] under a defence that changes how it trains: Lisa's bi-state optimization
/// ([`crate::defence::lisa`]: steps on the alignment data replace steps on `examples` in cycles,
/// and after the first part of the run every step's loss carries the proximal term) or Vaccine's
/// perturbation-aware steps ([`crate::defence::vaccine`]).
pub(crate) fn train_with<B: AutodiffBackend>(
    mut model: Llama<B>,
    examples: &[TrainExample],
    pad_id: u32,
    cfg: &TrainConfig,
    defence: &Defence<'_>,
    callback: &mut dyn TrainCallback<B>,
) -> Result<(Llama<B>, TrainReport)> {
    cfg.validate().map_err(CoreError::InvalidConfig)?;
    let bi = defence.lisa();
    let vaccine = defence.vaccine();
    let fitted = fit(examples, cfg.max_len);
    let usable = trainable(&fitted);
    // SafeInstr with the vectors off for its demonstrations: which of `usable` they are.
    let demonstration: Vec<bool> = match defence.demonstrations() {
        Some(marks) if marks.len() != examples.len() => {
            return Err(CoreError::InvalidConfig(format!(
                "safe_instr: {} demonstration marks for {} training examples",
                marks.len(),
                examples.len()
            )));
        }
        Some(marks) => fitted
            .iter()
            .zip(marks)
            .filter(|(e, _)| e.n_target() > 0)
            .map(|(_, &d)| d)
            .collect(),
        None => Vec::new(),
    };
    let fitted_guide = bi.map(|b| fit(b.guide, cfg.max_len)).unwrap_or_default();
    let guide = trainable(&fitted_guide);
    if bi.is_some() && guide.is_empty() {
        return Err(CoreError::InvalidConfig(
            "lisa: no alignment example has a response token (max_len too small?)".into(),
        ));
    }
    if usable.is_empty() {
        return Err(CoreError::InvalidConfig(
            "no training example has a response token (empty data, or max_len too small)".into(),
        ));
    }
    if trainable_params(&model) == 0 {
        return Err(CoreError::InvalidConfig(
            "nothing to train: every parameter of the model is frozen (make the base or an \
             adapter trainable first: set_base_trainable / set_adapter_trainable)"
                .into(),
        ));
    }
    let device = model.device();
    let per_step = cfg.batch_size * cfg.grad_accum;
    let steps_per_epoch = usable.len().div_ceil(per_step);
    let total = cfg.max_steps.unwrap_or(cfg.epochs * steps_per_epoch);
    let mut optimizer = AdamW::new(
        cfg.beta1 as f32,
        cfg.beta2 as f32,
        cfg.adam_eps as f32,
        cfg.weight_decay as f32,
    );
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    B::seed(&device, cfg.seed);
    let mut scaler = model
        .precision
        .needs_loss_scaling()
        .then(|| LossScaler::new(&cfg.loss_scale));

    let bar = if cfg.progress {
        let bar = ProgressBar::new(total as u64);
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} steps {msg} (ETA {eta})")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix("train");
        bar
    } else {
        ProgressBar::hidden()
    };

    // The whole plan up front: each epoch a fresh seeded shuffle cut into steps (the last step
    // of an epoch may be smaller).
    let mut plan: Vec<(usize, Vec<&TrainExample>)> = Vec::with_capacity(total);
    // Where each step's examples trained with the vectors on end: SafeInstr's demonstrations
    // (with `demonstration`) are moved behind the user's examples, to be trained with the vectors
    // off; otherwise the whole step.
    let mut vectors_on_until: Vec<usize> = Vec::with_capacity(total);
    let mut epoch = 0;
    while plan.len() < total {
        let mut order: Vec<usize> = (0..usable.len()).collect();
        order.shuffle(&mut rng);
        for c in order.chunks(per_step) {
            if plan.len() == total {
                break;
            }
            let mut c = c.to_vec();
            if !demonstration.is_empty() {
                // Stable: each part keeps the shuffle's order.
                c.sort_by_key(|&i| demonstration[i]);
            }
            vectors_on_until.push(
                c.iter()
                    .filter(|&&i| !demonstration.get(i).copied().unwrap_or(false))
                    .count(),
            );
            plan.push((epoch, c.iter().map(|&i| usable[i]).collect()));
        }
        epoch += 1;
    }
    // Lisa: the alignment state's steps take their batches from the alignment data instead,
    // shuffled afresh each time it has all been used (a seed of its own).
    let mut aligning = vec![false; total];
    if let Some(b) = bi {
        let mut rng = StdRng::seed_from_u64(cfg.seed ^ GUIDE_SEED_OFFSET);
        let mut order: Vec<usize> = Vec::new();
        for (step, (_, chunk)) in plan.iter_mut().enumerate() {
            if !b.cfg.aligning(step) {
                continue;
            }
            aligning[step] = true;
            let mut batch = Vec::with_capacity(per_step);
            while batch.len() < per_step {
                if order.is_empty() {
                    order = (0..guide.len()).collect();
                    order.shuffle(&mut rng);
                }
                batch.push(guide[order.pop().expect("refilled")]);
            }
            *chunk = batch;
            vectors_on_until[step] = chunk.len();
        }
    }

    // A saved state of this very run (same configuration, steps and examples): continue after
    // its last step.
    // Lisa's alignment data (empty otherwise) is part of what the run trains on.
    let all: Vec<&TrainExample> = usable.iter().chain(&guide).copied().collect();
    let fingerprint = resume::fingerprint(cfg, total, &all, &defence.salt());
    let mut report = TrainReport::default();
    let mut done = 0;
    let mut seconds_before = 0.0;
    if let Some(ck) = &cfg.checkpoint {
        let (m, state) = resume::load(ck, &fingerprint, model, &mut optimizer)?;
        model = m;
        if let Some(state) = state {
            done = state.step;
            seconds_before = state.report.seconds;
            report = state.report;
            if let (Some(s), Some((scale, good, skips))) = (scaler.as_mut(), state.loss_scale) {
                s.scale = scale;
                s.good_steps = good;
                s.skips_in_a_row = skips;
            }
            bar.set_position(done as u64);
            eprintln!(
                "    resuming at step {done}/{total} from {}",
                ck.dir.display()
            );
        }
    }
    let started = Instant::now();
    // Lisa's `w̃`: the trainable weights at the last switch of state (or at the start; a resumed
    // run starts at a switch, where its checkpoint was saved).
    let mut anchor = bi.map(|_| lisa::snapshot(&model));
    let mut last_save = done;
    for (step, (epoch, chunk)) in plan.into_iter().enumerate().skip(done) {
        let step_start = Instant::now();
        // Lisa with `vectors_when_aligning: false`: the vectors off for the alignment steps.
        if bi.is_some_and(|b| b.toggle_vectors) {
            set_security_vectors(&mut model, !aligning[step])?;
        }
        let mut drift = None;
        let proximal = match (bi, anchor.as_mut()) {
            (Some(b), Some(anchor)) => {
                if b.cfg.switches_at(step) {
                    *anchor = lisa::snapshot(&model);
                }
                b.cfg
                    .proximal_at(step, total)
                    .then_some((b.cfg.rho, &*anchor))
            }
            _ => None,
        };
        let n_targets: usize = chunk.iter().map(|e| e.n_target()).sum();
        let mut accumulator = GradientsAccumulator::<Llama<B>>::new();
        let mut single = None;
        // The user's examples, then (SafeInstr with the vectors off for them) the
        // demonstrations, each part in micro-batches of its own.
        let (on_part, off_part) = chunk.split_at(vectors_on_until[step]);
        let parts = [(on_part, true), (off_part, false)];
        let micro_batches: usize = parts
            .iter()
            .map(|(p, _)| p.len().div_ceil(cfg.batch_size))
            .sum();
        let mut loss_sum = 0.0;
        let mut tokens = 0;
        let micros = parts.into_iter().flat_map(|(part, vectors_on)| {
            part.chunks(cfg.batch_size).map(move |m| (m, vectors_on))
        });
        for (micro, vectors_on) in micros {
            if !demonstration.is_empty() {
                set_security_vectors(&mut model, vectors_on)?;
            }
            let batch = make_batch::<B>(micro, pad_id, &device);
            tokens += batch.n_tokens;
            let nll = match vaccine {
                None => response_nll_sum(&model, &batch),
                Some(v) => crate::defence::vaccine::perturbed_nll_sum(&model, &batch, v.rho).0,
            };
            // Token-weighted: every trained token of the step counts the same, whatever its
            // micro-batch.
            let mut loss = nll.div_scalar(n_targets as f64);
            loss_sum += loss.clone().inner().into_scalar().elem::<f64>();
            // Lisa's proximal term, once per step (with the first micro-batch).
            if let Some((rho, anchor)) = proximal
                && drift.is_none()
                && let Some(d) = lisa::squared_drift(&model, anchor)
            {
                drift = Some(d.clone().inner().into_scalar().elem::<f64>());
                loss = loss + d.mul_scalar(rho / 2.0);
            }
            let grads = match &scaler {
                Some(s) => loss.mul_scalar(s.scale).backward(),
                None => loss.backward(),
            };
            let grads = GradientsParams::from_grads(grads, &model);
            if micro_batches == 1 {
                single = Some(grads);
            } else {
                accumulator.accumulate(&model, grads);
            }
        }
        if !loss_sum.is_finite() {
            bar.abandon();
            return Err(CoreError::NonFinite {
                step,
                what: format!("loss {loss_sum}"),
            });
        }
        let grads = single.unwrap_or_else(|| accumulator.grads());
        let raw_norm = global_grad_norm(&model, &grads);
        let loss_scale = scaler.as_ref().map(|s| s.scale);
        // Gradients of an f16 step overflowed: skip the update and lower the scale.
        let skipped = scaler.is_some() && !raw_norm.is_finite();
        if let Some(s) = scaler.as_mut() {
            if skipped {
                if let Err(what) = s.overflowed() {
                    bar.abandon();
                    return Err(CoreError::NonFinite { step, what });
                }
            } else {
                s.finite();
            }
        }
        let grad_norm = raw_norm / loss_scale.unwrap_or(1.0);
        if !skipped && !grad_norm.is_finite() {
            bar.abandon();
            return Err(CoreError::NonFinite {
                step,
                what: format!("gradient norm {grad_norm} (loss {loss_sum:.4})"),
            });
        }
        let lr = cfg.lr_at(step, total);
        if !skipped {
            // Unscale (f16) and clip in one pass over the gradients.
            let mut factor = 1.0 / loss_scale.unwrap_or(1.0);
            if let Some(max) = cfg.max_grad_norm
                && grad_norm > max
            {
                factor *= max / (grad_norm + 1e-6);
            }
            model = optimizer.step(lr, model, grads, factor);
        } else {
            report.skipped_steps += 1;
        }
        let log = StepLog {
            step,
            epoch,
            loss: loss_sum,
            lr,
            grad_norm,
            tokens,
            seconds: step_start.elapsed().as_secs_f64(),
            loss_scale,
            skipped,
            aligning: aligning[step],
            drift,
        };
        report.tokens += tokens;
        let elapsed = seconds_before + started.elapsed().as_secs_f64();
        bar.set_message(format!(
            "loss {:.4} | lr {:.2e} | {:.0} tok/s",
            log.loss,
            lr,
            report.tokens as f64 / elapsed.max(1e-9)
        ));
        bar.inc(1);
        // Logs (nohup, CI) get no bar: a plain line every tenth of the run instead.
        if cfg.progress
            && bar.is_hidden()
            && ((step + 1) % total.div_ceil(10).max(1) == 0 || step + 1 == total)
        {
            let eta = elapsed / (step + 1) as f64 * (total - step - 1) as f64;
            eprintln!(
                "    train step {}/{total}: loss {:.4} | lr {:.2e} | {:.0} tok/s | ETA {:.0}s",
                step + 1,
                log.loss,
                lr,
                report.tokens as f64 / elapsed.max(1e-9),
                eta
            );
        }
        callback.on_step(&log);
        report.steps.push(log);
        // Under Lisa only where the state switches (there `w̃` is the saved weights), at least
        // `every` steps apart.
        let save_due = |every: usize| match bi {
            None => (step + 1) % every == 0,
            Some(b) => b.cfg.switches_at(step + 1) && step + 1 - last_save >= every,
        };
        if let Some(ck) = &cfg.checkpoint
            && ck.every > 0
            && step + 1 < total
            && save_due(ck.every)
        {
            last_save = step + 1;
            report.seconds = seconds_before + started.elapsed().as_secs_f64();
            let state = TrainState {
                fingerprint: fingerprint.clone(),
                step: step + 1,
                adam_step: optimizer.steps_taken(),
                loss_scale: scaler
                    .as_ref()
                    .map(|s| (s.scale, s.good_steps, s.skips_in_a_row)),
                report: report.clone(),
            };
            resume::save(ck, &state, &model, &optimizer)?;
        }
        if let Some(every) = cfg.eval_every
            && every > 0
            && (step + 1) % every == 0
        {
            callback.on_eval(step + 1, &model)?;
        }
    }
    bar.finish();
    if let Some(ck) = &cfg.checkpoint {
        resume::remove(ck)?;
    }
    report.seconds = seconds_before + started.elapsed().as_secs_f64();
    report.tokens_per_second = report.tokens as f64 / report.seconds.max(1e-9);
    Ok((model, report))
}

/// How many parameter values of `model` take gradients.
pub fn trainable_params<B: AutodiffBackend>(model: &Llama<B>) -> usize {
    struct Count(usize);
    impl<B: AutodiffBackend> burn::module::ModuleVisitor<B> for Count {
        fn visit_float<const D: usize>(
            &mut self,
            param: &burn::module::Param<burn::tensor::Tensor<B, D>>,
        ) {
            let t = param.val();
            if t.is_require_grad() {
                self.0 += t.shape().num_elements();
            }
        }
    }
    let mut count = Count(0);
    burn::module::Module::visit(model, &mut count);
    count.0
}
