//! The stage cache: the aligned model and the security vectors, stored outside the results by a
//! hash of everything that determines them (`<cache>/experiments/{align,vectors}/<hash>/`, PEFT
//! format), so every run — and every experiment — that shares them trains them once, also across
//! processes (`lock.rs`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;

use secvec_core::adapter::{
    AdapterConfig, load_peft_adapter, save_peft_adapter, set_adapter_trainable,
};
use secvec_core::train::{Checkpointing, TrainReport};
use secvec_models::Llama;

use super::lock::{Claim, claim};
use super::record::{TrainSummary, read_json, sha256_hex, write_json};
use super::schema::Experiment;
use crate::backend::BackendKind;

/// Optimizer steps between two saves of a training stage's state (mid-stage resume): a few
/// minutes of CPU training at the headline's scale, a few seconds to write for a LoRA stage.
/// `SECVEC_CHECKPOINT_EVERY` overrides it (the kill soak saves after every step).
pub fn checkpoint_every() -> usize {
    std::env::var("SECVEC_CHECKPOINT_EVERY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25)
}

/// Bumped when the built-in corpus or the stage code changes what a cached stage contains.
pub const CACHE_VERSION: &str = "secvec-stage-cache-v1";

/// A cache key with the compute precision added when it is not f32 and the backend when it is
/// not flex (so the keys of f32 flex entries, made before either choice existed, stay valid):
/// backends round differently, so a stage trained on one is not reused for another.
pub fn cache_key(exp: &Experiment, mut key: serde_json::Value) -> serde_json::Value {
    if exp.dtype != secvec_models::Precision::F32 {
        key["dtype"] = serde_json::json!(exp.dtype);
    }
    if exp.backend != BackendKind::Flex {
        key["backend"] = serde_json::json!(exp.backend.to_string());
    }
    key
}

/// Trains `stage` or loads it from the cache; returns the model with adapter `name` attached
/// (trained, frozen) and the training summary. `trainer` gets where to keep its checkpoints.
#[allow(clippy::too_many_arguments)]
pub fn cached_adapter<B: AutodiffBackend>(
    cache: &Path,
    stage: &str,
    name: &str,
    key: &serde_json::Value,
    model: Llama<B>,
    base_model: &str,
    adapter: &AdapterConfig,
    trainer: impl FnOnce(Llama<B>, Checkpointing) -> Result<(Llama<B>, TrainReport)>,
    examples: usize,
    fresh: bool,
) -> Result<(Llama<B>, TrainSummary, String)> {
    let hash = key_hash(key)?;
    let stage_dir = cache.join(stage);
    let dir = stage_dir.join(&hash);
    let summary_path = dir.join("training.json");
    std::fs::create_dir_all(&stage_dir)
        .with_context(|| format!("creating {}", stage_dir.display()))?;
    // One process trains a missing entry; the others (shards of a sweep) wait for it and load it.
    // `--fresh` retrains whatever the cache holds, but still one process at a time.
    let lock = stage_dir.join(format!(".{hash}.lock"));
    let done = || !fresh && summary_path.is_file();
    let _guard = match claim(&lock, done, stage)? {
        Claim::Mine(guard) => guard,
        Claim::Done => {
            let mut model = model;
            let mut summary: TrainSummary = read_json(&summary_path)?;
            load_peft_adapter(&mut model, &dir, name)
                .with_context(|| format!("loading cached {stage} from {}", dir.display()))?;
            set_adapter_trainable(&mut model, name, false)?;
            summary.cached = true;
            eprintln!("  [{stage}] reusing {} (cache hit)", dir.display());
            return Ok((model, summary, hash));
        }
    };
    // A killed training resumes from its last checkpoint, kept beside the entry it will become
    // (`--fresh` starts over).
    let partial = stage_dir.join(format!(".{hash}.partial"));
    if fresh && partial.exists() {
        std::fs::remove_dir_all(&partial).ok();
    }
    let checkpointing = Checkpointing {
        dir: partial,
        every: checkpoint_every(),
    };
    let (model, report) = trainer(model, checkpointing)?;
    let summary = TrainSummary::new(stage, examples, &report);
    let tmp = temp_entry(&dir)?;
    save_peft_adapter(&model, name, adapter, base_model, &tmp)?;
    write_json(&tmp.join("key.json"), key)?;
    write_json(&tmp.join("training.json"), &summary)?;
    write_json(&tmp.join("steps.json"), &report.steps)?;
    if !publish_entry(&tmp, &dir, "training.json", fresh)? {
        eprintln!(
            "  [{stage}] {} was written by another process meanwhile; keeping it",
            dir.display()
        );
    }
    Ok((model, summary, hash))
}

/// The name of a cache entry of `key`: the first 16 hex digits of its hash.
pub fn key_hash(key: &serde_json::Value) -> Result<String> {
    Ok(sha256_hex(&serde_json::to_vec(key)?)[..16].to_string())
}

/// An empty temporary folder beside the cache entry `dir` (`.<name>.tmp-<pid>`), to write a new
/// entry into before [`publish_entry`] renames it, so that a half-written entry never exists.
pub fn temp_entry(dir: &Path) -> Result<PathBuf> {
    let parent = dir.parent().context("a cache entry has a parent folder")?;
    let name = dir.file_name().context("a cache entry has a name")?;
    let tmp = parent.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).ok();
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    Ok(tmp)
}

/// Renames the written temporary folder `tmp` to the cache entry `dir` (with `fresh`, replacing
/// an old entry). Another process (a shard of the same sweep) may have written the same entry
/// meanwhile: the first complete one (holding the file `complete`) wins and is never removed
/// under a reader; ours is dropped (both come from the same key, so either serves) and the
/// answer is `false`.
pub fn publish_entry(tmp: &Path, dir: &Path, complete: &str, fresh: bool) -> Result<bool> {
    if fresh && dir.exists() {
        std::fs::remove_dir_all(dir).ok();
    }
    match std::fs::rename(tmp, dir) {
        Ok(()) => Ok(true),
        Err(_) if dir.join(complete).is_file() => {
            std::fs::remove_dir_all(tmp).ok();
            Ok(false)
        }
        Err(e) => Err(e).with_context(|| format!("moving {} to {}", tmp.display(), dir.display())),
    }
}
