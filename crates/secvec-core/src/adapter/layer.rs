//! Operations on the adapters attached to a model: attach, switch on/off, freeze, merge and
//! un-merge, remove.

use burn::module::{Param, ParamId};
use burn::tensor::{Tensor, TensorData, backend::Backend};
use rand::{Rng, SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, Normal};

use secvec_models::{Llama, LoraAdapter, ProjectionId};

use super::config::{AdapterConfig, AdapterInit};
use crate::error::{CoreError, Result};

fn param2<B: Backend>(
    data: Vec<f32>,
    shape: [usize; 2],
    device: &B::Device,
) -> Param<Tensor<B, 2>> {
    Param::initialized(
        ParamId::new(),
        Tensor::from_data(TensorData::new(data, shape), device),
    )
}

/// Names of the adapters attached anywhere in the model, in order of first appearance.
pub fn adapter_names<B: Backend>(model: &Llama<B>) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for id in model.projection_ids() {
        for a in &model.projection(id).adapters {
            if !names.contains(&a.name) {
                names.push(a.name.clone());
            }
        }
    }
    names
}

/// Attaches a new adapter `name` to every projection `config` targets; `A` is initialised on
/// the host from `config.seed` (identical on every backend), `B` at zero. Returns the number of
/// projections adapted.
pub fn add_adapter<B: Backend>(
    model: &mut Llama<B>,
    name: &str,
    config: &AdapterConfig,
) -> Result<usize> {
    config.validate().map_err(CoreError::InvalidConfig)?;
    if adapter_names(model).iter().any(|n| n == name) {
        return Err(CoreError::DuplicateAdapter { name: name.into() });
    }
    if let Some(layers) = &config.layers
        && let Some(&bad) = layers.iter().find(|&&l| l >= model.num_layers())
    {
        return Err(CoreError::InvalidConfig(format!(
            "layer {bad} does not exist (the model has {} layers)",
            model.num_layers()
        )));
    }
    let device = model.device();
    let mut rng = StdRng::seed_from_u64(config.seed);
    let r = config.rank;
    let mut count = 0;
    for id in model.projection_ids() {
        if !config.applies_to(id) {
            continue;
        }
        let proj = model.projection_mut(id);
        let (d_in, d_out) = (proj.d_in(), proj.d_out());
        // A is [d_in, r] here (PEFT: lora_A.weight [r, d_in]); its fan-in is d_in.
        let a: Vec<f32> = match config.init {
            AdapterInit::KaimingUniform => {
                let bound = 1.0 / (d_in as f64).sqrt();
                (0..d_in * r)
                    .map(|_| rng.random_range(-bound..bound) as f32)
                    .collect()
            }
            AdapterInit::Gaussian => {
                let normal = Normal::new(0.0, 1.0 / r as f64).expect("positive std");
                (0..d_in * r)
                    .map(|_| normal.sample(&mut rng) as f32)
                    .collect()
            }
        };
        proj.adapters.push(LoraAdapter {
            name: name.to_string(),
            a: param2::<B>(a, [d_in, r], &device),
            b: param2::<B>(vec![0.0; r * d_out], [r, d_out], &device),
            scaling: config.scaling(),
            dropout: config.dropout,
            active: true,
        });
        count += 1;
    }
    Ok(count)
}

fn for_each_adapter<B: Backend>(
    model: &mut Llama<B>,
    name: &str,
    mut f: impl FnMut(ProjectionId, &mut LoraAdapter<B>),
) -> Result<usize> {
    let mut count = 0;
    for id in model.projection_ids() {
        if let Some(a) = model.projection_mut(id).adapter_mut(name) {
            f(id, a);
            count += 1;
        }
    }
    if count == 0 {
        return Err(CoreError::NoSuchAdapter { name: name.into() });
    }
    Ok(count)
}

/// Switches adapter `name` on or off everywhere; returns the number of projections.
pub fn set_adapter_active<B: Backend>(
    model: &mut Llama<B>,
    name: &str,
    active: bool,
) -> Result<usize> {
    for_each_adapter(model, name, |_, a| a.active = active)
}

/// Makes adapter `name` trainable or frozen (no gradients).
pub fn set_adapter_trainable<B: Backend>(
    model: &mut Llama<B>,
    name: &str,
    trainable: bool,
) -> Result<usize> {
    for_each_adapter(model, name, |_, a| {
        a.a = a.a.clone().set_require_grad(trainable);
        a.b = a.b.clone().set_require_grad(trainable);
    })
}

/// Makes every base weight (embeddings, norms, projections, head) trainable or frozen.
pub fn set_base_trainable<B: Backend>(model: &mut Llama<B>, trainable: bool) {
    let g = |p: &mut Param<Tensor<B, 2>>| *p = p.clone().set_require_grad(trainable);
    let g1 = |p: &mut Param<Tensor<B, 1>>| *p = p.clone().set_require_grad(trainable);
    g(&mut model.embed_tokens);
    if let Some(h) = model.lm_head.as_mut() {
        g(h);
    }
    g1(&mut model.norm.weight);
    for layer in model.layers.iter_mut() {
        g1(&mut layer.input_layernorm.weight);
        g1(&mut layer.post_attention_layernorm.weight);
    }
    for id in model.projection_ids() {
        let p = model.projection_mut(id);
        g(&mut p.weight);
        if let Some(b) = p.bias.as_mut() {
            g1(b);
        }
    }
}

/// Detaches adapter `name` from the model and returns it (for saving elsewhere or re-attaching).
pub fn detach_adapter<B: Backend>(
    model: &mut Llama<B>,
    name: &str,
) -> Result<Vec<(ProjectionId, LoraAdapter<B>)>> {
    let mut removed = Vec::new();
    for id in model.projection_ids() {
        let proj = model.projection_mut(id);
        if let Some(i) = proj.adapters.iter().position(|a| a.name == name) {
            removed.push((id, proj.adapters.remove(i)));
        }
    }
    if removed.is_empty() {
        return Err(CoreError::NoSuchAdapter { name: name.into() });
    }
    Ok(removed)
}

fn delta<B: Backend>(a: &LoraAdapter<B>) -> Tensor<B, 2> {
    a.a.val().matmul(a.b.val()).mul_scalar(a.scaling)
}

/// Adds `scaling · A B` of adapter `name` into the base weights and detaches the adapter; the
/// returned adapters can be given to [`unmerge_adapter`] to undo the merge.
pub fn merge_adapter<B: Backend>(
    model: &mut Llama<B>,
    name: &str,
) -> Result<Vec<(ProjectionId, LoraAdapter<B>)>> {
    let removed = detach_adapter(model, name)?;
    for (id, a) in &removed {
        let p = model.projection_mut(*id);
        let require_grad = p.weight.is_require_grad();
        let merged = p.weight.val() + delta(a);
        p.weight = Param::initialized(p.weight.id, merged.detach()).set_require_grad(require_grad);
    }
    Ok(removed)
}

/// Undoes [`merge_adapter`]: subtracts each adapter's delta from the base weights and attaches
/// the adapters again (inactive).
pub fn unmerge_adapter<B: Backend>(
    model: &mut Llama<B>,
    merged: Vec<(ProjectionId, LoraAdapter<B>)>,
) {
    for (id, mut a) in merged {
        let p = model.projection_mut(id);
        let require_grad = p.weight.is_require_grad();
        let unmerged = p.weight.val() - delta(&a);
        p.weight =
            Param::initialized(p.weight.id, unmerged.detach()).set_require_grad(require_grad);
        a.active = false;
        p.adapters.push(a);
    }
}
