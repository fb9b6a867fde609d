//! Mid-stage resume: a training run saves its state every few steps and a killed run continues
//! from the last save, ending with the weights an uninterrupted run would have.
//!
//! The state is what [`super::train`] cannot recompute: the trainable weights, AdamW's moments
//! and step count, the f16 loss scale and the report of the steps done. The data order is not
//! stored: the whole plan of steps is drawn from `TrainConfig::seed` before the first step, so
//! the resumed run draws it again and skips the steps done. Frozen weights are not stored either;
//! the caller builds the same model again (the same base, adapters and initialisation seeds).
//!
//! On disk, `<dir>/state.json` and `<dir>/state.safetensors` (`p.<i>`: the i-th trainable
//! parameter in the model's visiting order; `m.<i>`, `v.<i>`: its moments). A save is written to
//! `<dir>.tmp` and swapped in by two renames; a crash between them leaves `<dir>.old`, which is
//! read instead. A state whose fingerprint (the configuration, the number of steps, the examples)
//! differs from the run's is an error, never silently used.
//!
//! Why not burn-train's learner and its file checkpointer: the trainer here has its own fused
//! AdamW (`optim.rs`, one in-place pass per parameter instead of about fourteen), token-weighted
//! accumulation and f16 loss scaling, which burn-train's learner does not have; its checkpointer
//! stores burn records of the whole model, where a LoRA stage needs only its adapters.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};

use secvec_models::Llama;
use secvec_models::hf::bytes_to_f32;

use super::TrainConfig;
use super::batch::TrainExample;
use super::optim::{AdamW, Named};
use super::trainer::TrainReport;
use crate::adapter::peft::write_f32_safetensors;
use crate::checkpoint::host;
use crate::error::{CoreError, Result};
use crate::fsio::write_atomic;

/// Where and how often a training run saves its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpointing {
    /// The state's folder; a run that finds a state there resumes from it, and removes it once
    /// it has finished.
    pub dir: PathBuf,
    /// Save after every this many optimizer steps (0: never).
    pub every: usize,
}

/// Everything of a run's state but the tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TrainState {
    pub fingerprint: String,
    /// Optimizer steps done.
    pub step: usize,
    pub adam_step: i32,
    /// f16 only: `(scale, good steps, skips in a row)`.
    pub loss_scale: Option<(f64, usize, usize)>,
    /// The steps done, and the seconds they took.
    pub report: TrainReport,
}

const STATE: &str = "state.json";
const TENSORS: &str = "state.safetensors";

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    dir.with_file_name(name)
}

fn err(path: &Path, cause: impl std::fmt::Display) -> CoreError {
    CoreError::Checkpoint {
        path: path.to_path_buf(),
        cause: cause.to_string(),
    }
}

/// What identifies a training run: its configuration, its number of steps and its examples.
///
/// `salt` describes what else shapes the run (Lisa's settings); empty for plain training, which
/// keeps the fingerprints of existing checkpoints.
pub(crate) fn fingerprint(
    cfg: &TrainConfig,
    total: usize,
    examples: &[&TrainExample],
    salt: &str,
) -> String {
    // FNV-1a over the configuration's JSON and every token id: cheap, and any change shows.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    };
    // What does not change the training (callbacks' cadence, the progress bar) is left out.
    let cfg = TrainConfig {
        eval_every: None,
        progress: false,
        ..cfg.clone()
    };
    eat(serde_json::to_string(&cfg).unwrap_or_default().as_bytes());
    eat(&total.to_le_bytes());
    eat(salt.as_bytes());
    for e in examples {
        eat(&e.n_prompt.to_le_bytes());
        for id in &e.ids {
            eat(&id.to_le_bytes());
        }
        eat(b";");
    }
    format!("{h:016x}-{total}-{}", examples.len())
}

/// The trainable parameters, by their position among the trainable ones.
struct ExportParams(Named, usize);

impl<B: AutodiffBackend> ModuleVisitor<B> for ExportParams {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let t = param.val();
        if !t.is_require_grad() {
            return;
        }
        let shape = t.dims().to_vec();
        self.0
            .push((format!("p.{}", self.1), shape, host(t.inner())));
        self.1 += 1;
    }
}

/// Puts stored values into the trainable parameters.
struct ImportParams<'a> {
    tensors: &'a HashMap<String, (Vec<f32>, Vec<usize>)>,
    index: usize,
    problem: Option<String>,
}

impl<B: AutodiffBackend> ModuleMapper<B> for ImportParams<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        if !tensor.is_require_grad() {
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let key = format!("p.{}", self.index);
        self.index += 1;
        let dims = tensor.dims();
        match self.tensors.get(&key) {
            Some((values, shape)) if shape.as_slice() == dims.as_slice() => {
                let dtype = tensor.dtype();
                let device = tensor.device();
                let t = Tensor::<B, D>::from_data(TensorData::new(values.clone(), dims), &device)
                    .cast(dtype)
                    .require_grad();
                Param::from_mapped_value(id, t, mapper)
            }
            found => {
                if self.problem.is_none() {
                    self.problem = Some(match found {
                        Some((_, shape)) => {
                            format!("`{key}` has shape {shape:?}, the model's is {dims:?}")
                        }
                        None => format!("`{key}` is missing"),
                    });
                }
                Param::from_mapped_value(id, tensor, mapper)
            }
        }
    }
}

/// Saves the state after `state.step` steps.
pub(crate) fn save<B: AutodiffBackend>(
    ck: &Checkpointing,
    state: &TrainState,
    model: &Llama<B>,
    optimizer: &AdamW,
) -> Result<()> {
    let tmp = sibling(&ck.dir, "tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| CoreError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| CoreError::io(&tmp, e))?;
    let mut params = ExportParams(Vec::new(), 0);
    model.visit(&mut params);
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = params
        .0
        .into_iter()
        .chain(optimizer.export_moments(model))
        .collect();
    write_f32_safetensors(&tmp.join(TENSORS), &tensors)?;
    let json = serde_json::to_vec_pretty(state).map_err(|e| err(&tmp, e))?;
    write_atomic(&tmp.join(STATE), &json)?;
    let old = sibling(&ck.dir, "old");
    if ck.dir.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| CoreError::io(&old, e))?;
        }
        std::fs::rename(&ck.dir, &old).map_err(|e| CoreError::io(&ck.dir, e))?;
    }
    std::fs::rename(&tmp, &ck.dir).map_err(|e| CoreError::io(&tmp, e))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| CoreError::io(&old, e))?;
    }
    Ok(())
}

/// The saved state, if there is one: the model with its trainable weights restored, the
/// optimizer's moments set, and the rest of the state.
pub(crate) fn load<B: AutodiffBackend>(
    ck: &Checkpointing,
    fingerprint: &str,
    model: Llama<B>,
    optimizer: &mut AdamW,
) -> Result<(Llama<B>, Option<TrainState>)> {
    let dir = if ck.dir.join(STATE).is_file() {
        ck.dir.clone()
    } else {
        let old = sibling(&ck.dir, "old");
        if old.join(STATE).is_file() {
            old
        } else {
            return Ok((model, None));
        }
    };
    let state_path = dir.join(STATE);
    let text = std::fs::read_to_string(&state_path).map_err(|e| CoreError::io(&state_path, e))?;
    let state: TrainState = serde_json::from_str(&text).map_err(|e| err(&state_path, e))?;
    if state.fingerprint != fingerprint {
        return Err(err(
            &dir,
            format!(
                "it was saved by another training run (fingerprint {}, this run's {fingerprint}); \
                 delete the folder to start this stage over",
                state.fingerprint
            ),
        ));
    }
    let path = dir.join(TENSORS);
    let bytes = std::fs::read(&path).map_err(|e| CoreError::io(&path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| err(&path, e))?;
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        let values = bytes_to_f32(view.dtype(), view.data())
            .ok_or_else(|| err(&path, format!("`{name}` is not f32")))?;
        tensors.insert(name, (values, view.shape().to_vec()));
    }
    let mut import = ImportParams {
        tensors: &tensors,
        index: 0,
        problem: None,
    };
    let model = model.map(&mut import);
    if let Some(p) = import.problem {
        return Err(err(&path, p));
    }
    let stored = tensors.keys().filter(|k| k.starts_with("p.")).count();
    if stored != import.index {
        return Err(err(
            &path,
            format!(
                "it holds {stored} trainable tensors, the model has {}",
                import.index
            ),
        ));
    }
    optimizer
        .import_moments(&model, state.adam_step, &tensors)
        .map_err(|e| err(&path, e))?;
    Ok((model, Some(state)))
}

/// Removes the state of a finished run (and what a crash may have left beside it).
pub(crate) fn remove(ck: &Checkpointing) -> Result<()> {
    for dir in [
        ck.dir.clone(),
        sibling(&ck.dir, "tmp"),
        sibling(&ck.dir, "old"),
    ] {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| CoreError::io(&dir, e))?;
        }
    }
    Ok(())
}
