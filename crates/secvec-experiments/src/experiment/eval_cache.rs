//! The evaluation cache: the metrics and generations of a model that the stage cache identifies
//! (the shipped model, the aligned model, an `off` arm's task LoRA), kept in
//! `<cache>/experiments/eval/<hash>/` so that runs sharing that model do not generate its answers
//! again. Sweeps over the vectors' settings or over defences that leave the `off` arm alone
//! evaluate the same model in every run (about 3 minutes each on a 2-core CPU at 100 prompts per
//! set and the 520 AdvBench prompts). Greedy decoding of the same weights on the same prompts with
//! the same settings gives the same answers, which is what the stage cache already relies on for
//! training; the key holds everything else that decides the answers and their grading (the
//! evaluation settings, the judge, a digest of every evaluation set, the backend and precision).
//! `--fresh` evaluates again and replaces the entry.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use secvec_core::eval::stats::Rate;

use super::cache::{key_hash, publish_entry, temp_entry};
use super::record::{read_json, write_json};

const METRICS_FILE: &str = "metrics.json";
const GENERATIONS_FILE: &str = "generations.jsonl";

/// What an entry holds besides the generations.
#[derive(Serialize, Deserialize)]
struct CachedEval {
    metrics: BTreeMap<String, Rate>,
    /// The seconds the evaluation took when it ran.
    eval_seconds: f64,
}

/// The entry of `key` under the stage cache `cache` (`<cache>/eval/<hash>`).
pub fn entry(cache: &Path, key: &serde_json::Value) -> Result<PathBuf> {
    Ok(cache.join("eval").join(key_hash(key)?))
}

/// The cached metrics and the seconds the evaluation took, with the generations copied to
/// `generations`; `None` when the entry is not there.
pub fn load(entry: &Path, generations: &Path) -> Result<Option<(BTreeMap<String, Rate>, f64)>> {
    let metrics = entry.join(METRICS_FILE);
    if !metrics.is_file() {
        return Ok(None);
    }
    let cached: CachedEval = read_json(&metrics)?;
    let from = entry.join(GENERATIONS_FILE);
    std::fs::copy(&from, generations)
        .with_context(|| format!("copying {} to {}", from.display(), generations.display()))?;
    Ok(Some((cached.metrics, cached.eval_seconds)))
}

/// Keeps an evaluation: its key, metrics and the generations file the evaluator wrote. Written to
/// a temporary folder and renamed, so that a half-written entry never exists; when another
/// process (a shard of the same sweep) stored the same evaluation meanwhile, its entry stays.
pub fn store(
    entry: &Path,
    key: &serde_json::Value,
    metrics: &BTreeMap<String, Rate>,
    eval_seconds: f64,
    generations: &Path,
    fresh: bool,
) -> Result<()> {
    // `temp_entry` creates the folders above the entry as well.
    let tmp = temp_entry(entry)?;
    write_json(&tmp.join("key.json"), key)?;
    write_json(
        &tmp.join(METRICS_FILE),
        &CachedEval {
            metrics: metrics.clone(),
            eval_seconds,
        },
    )?;
    std::fs::copy(generations, tmp.join(GENERATIONS_FILE))
        .with_context(|| format!("copying {}", generations.display()))?;
    publish_entry(&tmp, entry, METRICS_FILE, fresh)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_round_trips_and_a_missing_one_is_none() {
        let dir = std::env::temp_dir().join(format!("secvec-eval-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let key = serde_json::json!({"model": "m", "sets": ["a"]});
        let e = entry(&dir, &key).unwrap();
        assert!(e.starts_with(dir.join("eval")));
        assert_ne!(e, entry(&dir, &serde_json::json!({"model": "n"})).unwrap());
        let generations = dir.join("generations-aligned.jsonl");
        assert!(load(&e, &generations).unwrap().is_none());
        std::fs::write(&generations, "{\"set\":\"harmful\"}\n").unwrap();
        let metrics = BTreeMap::from([("harmful_rate".to_string(), Rate::new(3, 100))]);
        store(&e, &key, &metrics, 12.5, &generations, false).unwrap();
        // A second store of the same evaluation keeps the first entry.
        store(&e, &key, &metrics, 99.0, &generations, false).unwrap();
        let copied = dir.join("generations-attacked-off.jsonl");
        let (m, secs) = load(&e, &copied).unwrap().unwrap();
        assert_eq!(m, metrics);
        assert_eq!(secs, 12.5);
        assert_eq!(
            std::fs::read_to_string(&copied).unwrap(),
            "{\"set\":\"harmful\"}\n"
        );
        // `--fresh` replaces it.
        store(&e, &key, &metrics, 7.0, &generations, true).unwrap();
        assert_eq!(load(&e, &copied).unwrap().unwrap().1, 7.0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
