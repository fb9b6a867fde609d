//! Hugging Face model directories: `config.json`, `model.safetensors` or sharded
//! `model-*.safetensors` with `model.safetensors.index.json`, weights in f32, f16 or bf16.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use crate::error::{ModelError, Result};
use crate::weights::WeightSource;

/// The tensors of a safetensors checkpoint (one file or several shards), held in memory.
pub struct SafetensorsSource {
    origin: PathBuf,
    /// File contents, one per shard.
    files: Vec<(PathBuf, Vec<u8>)>,
    /// Tensor name → index into `files`.
    index: HashMap<String, usize>,
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

fn parse_error(path: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::Safetensors {
        path: path.to_path_buf(),
        cause: e.to_string(),
    }
}

impl SafetensorsSource {
    /// Opens the checkpoint of a model directory.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let paths: Vec<PathBuf> = if single.is_file() {
            vec![single]
        } else if index_path.is_file() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| ModelError::io(&index_path, e))?;
            let index: ShardIndex =
                serde_json::from_str(&text).map_err(|source| ModelError::Json {
                    path: index_path.clone(),
                    source,
                })?;
            let mut shards: Vec<String> = index.weight_map.values().cloned().collect();
            shards.sort();
            shards.dedup();
            // Shards are files beside the index: a name that leaves the folder (`../x`, `/etc/x`)
            // would make a downloaded index read any file the user can.
            if let Some(bad) = shards.iter().find(|s| {
                let p = Path::new(s.as_str());
                p.components().count() != 1
                    || !matches!(p.components().next(), Some(std::path::Component::Normal(_)))
            }) {
                return Err(ModelError::Safetensors {
                    path: index_path,
                    cause: format!(
                        "weight_map names the shard `{bad}`, which is not a file name in the \
                         model's folder"
                    ),
                });
            }
            shards.into_iter().map(|s| dir.join(s)).collect()
        } else {
            return Err(ModelError::MissingTensor {
                path: dir.to_path_buf(),
                name: "model.safetensors (or model.safetensors.index.json)".into(),
            });
        };
        Self::open_files(dir, &paths)
    }

    /// Opens the given safetensors files as one checkpoint.
    pub fn open_files(origin: &Path, paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut index = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
            let st = SafeTensors::deserialize(&bytes).map_err(|e| parse_error(path, e))?;
            for name in st.names() {
                index.insert(name.to_string(), i);
            }
            files.push((path.clone(), bytes));
        }
        Ok(Self {
            origin: origin.to_path_buf(),
            files,
            index,
        })
    }

    /// Names of all tensors.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.index.keys().cloned().collect();
        names.sort();
        names
    }
}

/// Converts a safetensors tensor's little-endian bytes to f32.
pub fn bytes_to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    let pairs = || {
        bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
    };
    Some(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => pairs().map(|b| half::f16::from_bits(b).to_f32()).collect(),
        Dtype::BF16 => pairs().map(|b| half::bf16::from_bits(b).to_f32()).collect(),
        _ => return None,
    })
}

impl WeightSource for SafetensorsSource {
    fn origin(&self) -> &Path {
        &self.origin
    }

    fn tensor(&self, name: &str) -> Result<Option<(Vec<f32>, Vec<usize>)>> {
        let Some(&i) = self.index.get(name) else {
            return Ok(None);
        };
        let (path, bytes) = &self.files[i];
        let st = SafeTensors::deserialize(bytes).map_err(|e| parse_error(path, e))?;
        let view = st.tensor(name).map_err(|e| parse_error(path, e))?;
        let data = bytes_to_f32(view.dtype(), view.data()).ok_or_else(|| {
            ModelError::UnsupportedDtype {
                path: path.clone(),
                name: name.to_string(),
                dtype: format!("{:?}", view.dtype()),
            }
        })?;
        Ok(Some((data, view.shape().to_vec())))
    }
}
