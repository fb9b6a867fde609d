//! The PEFT on-disk adapter format: `adapter_config.json` + `adapter_model.safetensors`, keys
//! `base_model.model.model.layers.{i}.{self_attn|mlp}.{proj}.lora_{A|B}.weight`, `lora_A`
//! `[r, d_in]` and `lora_B` `[d_out, r]` — so adapters made here load in PEFT and PEFT adapters
//! (the LoRA subset: no DoRA, no per-module rank/alpha patterns) load here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{Param, ParamId};
use burn::tensor::{Tensor, TensorData, backend::Backend};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde_json::{Value, json};

use secvec_models::hf::bytes_to_f32;
use secvec_models::weights::transpose;
use secvec_models::{Llama, LoraAdapter, ProjectionId, ProjectionKind};

use super::config::AdapterConfig;
use super::layer::adapter_names;
use crate::checkpoint::host;
use crate::error::{CoreError, Result};
use crate::fsio::{replace_atomic, write_atomic};

/// A tensor on the host: values and shape.
type HostTensor = (Vec<f32>, Vec<usize>);

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
const KEY_PREFIX: &str = "base_model.model.";

/// The PEFT key of one LoRA matrix (`which` is `lora_A` or `lora_B`).
pub fn peft_key(id: ProjectionId, which: &str) -> String {
    format!("{KEY_PREFIX}{}.{which}.weight", id.hf_path())
}

/// Parses a PEFT key into the projection and `lora_A`/`lora_B`.
fn parse_key(key: &str) -> Option<(ProjectionId, &str)> {
    let rest = key
        .strip_prefix(KEY_PREFIX)?
        .strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (parent, rest) = rest.split_once('.')?;
    let (proj, rest) = rest.split_once('.')?;
    // PEFT drops the adapter name on save ("lora_A.weight"); accept "lora_A.default.weight" too.
    let which = rest.strip_suffix(".weight")?;
    let which = which.split('.').next()?;
    if which != "lora_A" && which != "lora_B" {
        return None;
    }
    let kind = ProjectionKind::from_hf_name(proj)?;
    (kind.hf_parent() == parent).then_some((ProjectionId { layer, kind }, which))
}

fn config_error(path: &Path, field: &str, cause: impl Into<String>) -> CoreError {
    CoreError::AdapterConfig {
        path: path.to_path_buf(),
        field: field.into(),
        cause: cause.into(),
    }
}

/// Reads a PEFT `adapter_config.json` into an [`AdapterConfig`], rejecting what this crate does
/// not implement.
pub fn read_peft_config(path: &Path) -> Result<AdapterConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| CoreError::io(path, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|source| CoreError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let peft_type = v.get("peft_type").and_then(Value::as_str).unwrap_or("LORA");
    if peft_type != "LORA" {
        return Err(config_error(
            path,
            "peft_type",
            format!("`{peft_type}` (only LORA)"),
        ));
    }
    for (field, unsupported) in [("use_dora", true), ("fan_in_fan_out", true)] {
        if v.get(field).and_then(Value::as_bool) == Some(unsupported) {
            return Err(config_error(path, field, "not supported"));
        }
    }
    for field in ["rank_pattern", "alpha_pattern"] {
        if v.get(field)
            .and_then(Value::as_object)
            .is_some_and(|m| !m.is_empty())
        {
            return Err(config_error(
                path,
                field,
                "per-module patterns are not supported",
            ));
        }
    }
    if let Some(bias) = v.get("bias").and_then(Value::as_str)
        && bias != "none"
    {
        return Err(config_error(
            path,
            "bias",
            format!("`{bias}` (only \"none\")"),
        ));
    }
    let rank = v
        .get("r")
        .and_then(Value::as_u64)
        .ok_or_else(|| config_error(path, "r", "missing or not a positive integer"))?
        as usize;
    let alpha = v
        .get("lora_alpha")
        .and_then(Value::as_f64)
        .ok_or_else(|| config_error(path, "lora_alpha", "missing or not a number"))?;
    let targets = match v.get("target_modules") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|t| {
                t.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| config_error(path, "target_modules", "entries must be strings"))
            })
            .collect::<Result<Vec<_>>>()?,
        Some(Value::String(s)) => {
            return Err(config_error(
                path,
                "target_modules",
                format!("regular expression `{s}` is not supported; list the module names"),
            ));
        }
        _ => return Err(config_error(path, "target_modules", "missing")),
    };
    let layers = match v.get("layers_to_transform") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(vec![n.as_u64().unwrap_or(0) as usize]),
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|i| {
                    i.as_u64().map(|x| x as usize).ok_or_else(|| {
                        config_error(path, "layers_to_transform", "entries must be integers")
                    })
                })
                .collect::<Result<Vec<_>>>()?,
        ),
        Some(_) => return Err(config_error(path, "layers_to_transform", "must be a list")),
    };
    let config = AdapterConfig {
        rank,
        alpha,
        dropout: v.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0),
        targets,
        layers,
        use_rslora: v
            .get("use_rslora")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        ..AdapterConfig::default()
    };
    config
        .validate()
        .map_err(|cause| config_error(path, "target_modules", cause))?;
    Ok(config)
}

/// Loads a PEFT adapter directory into the model as adapter `name` (active). Every tensor must
/// belong to a projection of this model with matching shapes, and every projection the config
/// targets must have both matrices.
pub fn load_peft_adapter<B: Backend>(
    model: &mut Llama<B>,
    dir: &Path,
    name: &str,
) -> Result<AdapterConfig> {
    if adapter_names(model).iter().any(|n| n == name) {
        return Err(CoreError::DuplicateAdapter { name: name.into() });
    }
    let config_path = dir.join(CONFIG_FILE);
    let config = read_peft_config(&config_path)?;
    let weights_path = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&weights_path).map_err(|e| CoreError::io(&weights_path, e))?;
    let st_err = |e: safetensors::SafeTensorError| CoreError::Safetensors {
        path: weights_path.clone(),
        cause: e.to_string(),
    };
    let st = SafeTensors::deserialize(&bytes).map_err(st_err)?;
    let mut found: BTreeMap<ProjectionId, [Option<HostTensor>; 2]> = BTreeMap::new();
    for (key, view) in st.tensors() {
        let (id, which) = parse_key(&key)
            .filter(|(id, _)| id.layer < model.num_layers())
            .ok_or_else(|| CoreError::UnknownAdapterKey {
                path: weights_path.clone(),
                key: key.clone(),
            })?;
        let data =
            bytes_to_f32(view.dtype(), view.data()).ok_or_else(|| CoreError::Safetensors {
                path: weights_path.clone(),
                cause: format!("tensor `{key}` has unsupported dtype {:?}", view.dtype()),
            })?;
        let slot = if which == "lora_A" { 0 } else { 1 };
        found.entry(id).or_default()[slot] = Some((data, view.shape().to_vec()));
    }
    let device = model.device();
    let r = config.rank;
    for id in model.projection_ids() {
        let entry = found.remove(&id);
        if entry.is_none() && !config.applies_to(id) {
            continue;
        }
        let [a, b] = entry.unwrap_or_default();
        let missing = |which| CoreError::MissingAdapterTensor {
            path: weights_path.clone(),
            key: peft_key(id, which),
        };
        let (a, a_shape) = a.ok_or_else(|| missing("lora_A"))?;
        let (b, b_shape) = b.ok_or_else(|| missing("lora_B"))?;
        let proj = model.projection_mut(id);
        let (d_in, d_out) = (proj.d_in(), proj.d_out());
        for (key, shape, expected) in [
            (peft_key(id, "lora_A"), a_shape, vec![r, d_in]),
            (peft_key(id, "lora_B"), b_shape, vec![d_out, r]),
        ] {
            if shape != expected {
                return Err(CoreError::AdapterShape {
                    path: weights_path.clone(),
                    key,
                    expected,
                    found: shape,
                });
            }
        }
        let a = transpose(&a, r, d_in);
        let b = transpose(&b, d_out, r);
        proj.adapters.push(LoraAdapter {
            name: name.to_string(),
            a: Param::initialized(
                ParamId::new(),
                Tensor::from_data(TensorData::new(a, [d_in, r]), &device),
            ),
            b: Param::initialized(
                ParamId::new(),
                Tensor::from_data(TensorData::new(b, [r, d_out]), &device),
            ),
            scaling: config.scaling(),
            dropout: config.dropout,
            active: true,
        });
    }
    Ok(config)
}

/// Writes adapter `name` of the model as a PEFT adapter directory. `base_model` is recorded as
/// `base_model_name_or_path`.
pub fn save_peft_adapter<B: Backend>(
    model: &Llama<B>,
    name: &str,
    config: &AdapterConfig,
    base_model: &str,
    dir: &Path,
) -> Result<PathBuf> {
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for id in model.projection_ids() {
        let Some(a) = model.projection(id).adapter(name) else {
            continue;
        };
        let (d_in, r) = (a.a.dims()[0], a.a.dims()[1]);
        let d_out = a.b.dims()[1];
        // Stored transposed: lora_A [r, d_in], lora_B [d_out, r].
        let a_t = transpose(&host(a.a.val()), d_in, r);
        let b_t = transpose(&host(a.b.val()), r, d_out);
        tensors.push((peft_key(id, "lora_A"), vec![r, d_in], a_t));
        tensors.push((peft_key(id, "lora_B"), vec![d_out, r], b_t));
    }
    if tensors.is_empty() {
        return Err(CoreError::NoSuchAdapter { name: name.into() });
    }
    std::fs::create_dir_all(dir).map_err(|e| CoreError::io(dir, e))?;
    let weights_path = dir.join(WEIGHTS_FILE);
    write_f32_safetensors(&weights_path, &tensors)?;
    let peft_config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": config.rank,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": config.targets,
        "layers_to_transform": config.layers,
        "use_rslora": config.use_rslora,
        "use_dora": false,
        "bias": "none",
        "fan_in_fan_out": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "modules_to_save": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "secvec_adapter_name": name,
    });
    let config_path = dir.join(CONFIG_FILE);
    let text = serde_json::to_string_pretty(&peft_config).expect("JSON of plain values");
    write_atomic(&config_path, text.as_bytes())?;
    Ok(dir.to_path_buf())
}

/// Writes `(name, shape, values)` f32 tensors as a safetensors file (PyTorch `format: pt`
/// metadata), atomically: streamed into a temporary file, synced, then renamed over `path`. On
/// little-endian hosts the values are written from where they lie (no copy of the data in
/// memory; a full model's training state is 1.5 GB).
pub fn write_f32_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
) -> Result<()> {
    let err = |e: safetensors::SafeTensorError| CoreError::Safetensors {
        path: path.to_path_buf(),
        cause: e.to_string(),
    };
    #[cfg(target_endian = "little")]
    let bytes: Vec<&[u8]> = tensors
        .iter()
        .map(|(_, _, v)| bytemuck::cast_slice::<f32, u8>(v))
        .collect();
    #[cfg(not(target_endian = "little"))]
    let owned: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    #[cfg(not(target_endian = "little"))]
    let bytes: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
    let views = tensors
        .iter()
        .zip(bytes)
        .map(|((k, shape, _), data)| {
            TensorView::new(Dtype::F32, shape.clone(), data).map(|v| (k.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(err)?;
    let metadata = Some(std::collections::HashMap::from([(
        "format".to_string(),
        "pt".to_string(),
    )]));
    replace_atomic(path, |tmp| {
        safetensors::serialize_to_file(views, metadata, tmp).map_err(err)
    })
}
