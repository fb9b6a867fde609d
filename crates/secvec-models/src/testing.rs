//! Helpers shared by the test suites of this workspace: the fixture directory (copies of the
//! Hugging Face reference outputs, `tests/fixtures/` at the workspace root) and comparisons.
//! Not part of the modelling API (hidden from its documentation); the `check` command reads its
//! reference files with its own fallible readers.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use serde_json::Value;

use crate::{LoadedModel, ModelSource, load_model};

/// SmolLM2-135M-Instruct from the model cache (fetched on first use); panics with the cause.
/// Test files keep it in their own `OnceLock`, one per backend type.
pub fn load_smollm2<B: Backend>() -> LoadedModel<B> {
    let source = ModelSource::parse("smollm2-135m-instruct").expect("a known model name");
    load_model::<B>(&source, None, &Default::default())
        .unwrap_or_else(|e| panic!("loading SmolLM2 failed: {e}"))
}

/// `tests/fixtures/` of the workspace.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// Reads a JSON file; panics with the path on failure (tests only).
pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A JSON array of integers.
pub fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("integer") as u32)
        .collect()
}

/// A JSON array of numbers.
pub fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

/// Asserts element-wise `|a - e| <= tol`, naming the first offending index.
pub fn assert_close(actual: &[f32], expected: &[f32], tol: f32, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= tol,
            "{what}[{i}]: got {a}, expected {e} (tolerance {tol})"
        );
    }
}

/// `log(sum(exp(row)))`, computed stably.
pub fn logsumexp(row: &[f32]) -> f32 {
    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let s: f64 = row.iter().map(|&x| ((x - max) as f64).exp()).sum();
    max + s.ln() as f32
}
