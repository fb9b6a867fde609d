//! Activation-steering security vectors (issue #14, item 2): the second kind of vector beside the
//! LoRA security vectors of `train::phases`.
//!
//! Source: Chen et al. 2025, *Persona Vectors: Monitoring and Controlling Character Traits in
//! Language Models* (arXiv 2507.21509). A trait's direction at a layer is the difference of the
//! mean residual-stream activation over the response tokens of answers that show the trait and
//! of answers that do not. "Preventative steering" adds `α · v` at that layer while the model is
//! fine-tuned and removes it at inference, so that the fine-tuning data no longer has to move the
//! model along `v` and the trait is not learned — the same logic as security vectors, with a
//! fixed direction in place of trained LoRA weights.
//!
//! Here the trait is harmful compliance: `v = mean(compliant answers to harmful prompts) −
//! mean(refusals of the same prompts)`. Choices the paper leaves to the user, made here: the
//! activations are the residual stream after the chosen decoder layers (the output of
//! `DecoderLayer::forward`), pooled over every response token of every example (each token counts
//! once; the end-of-turn token included), and the raw difference is used, not a unit vector, so
//! `coefficient = 1` moves the stream by the whole observed gap.

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use secvec_models::attention::build_attention_mask;
use secvec_models::transformer::int_tensor;
use secvec_models::{Llama, SteeringVector};

use crate::checkpoint::host;
use crate::error::{CoreError, Result};
use crate::train::TrainExample;

/// A steering direction: the layer it is added after, and its values `[hidden]`.
pub type Direction = (usize, Vec<f32>);

fn check_layers<B: Backend>(model: &Llama<B>, layers: &[usize]) -> Result<()> {
    if layers.is_empty() {
        return Err(CoreError::InvalidConfig(
            "steering: no layer given (expected at least one decoder layer index)".into(),
        ));
    }
    match layers.iter().find(|&&l| l >= model.num_layers()) {
        Some(l) => Err(CoreError::InvalidConfig(format!(
            "steering: layer {l} does not exist (the model has {} layers)",
            model.num_layers()
        ))),
        None => Ok(()),
    }
}

/// The mean residual-stream activation after each of `layers` over every response token of
/// `examples` (the tokens after `n_prompt`), in `layers`' order. Runs in batches of
/// `batch_size`, right-padded (the causal mask keeps the padding out of real tokens).
pub fn mean_response_activations<B: Backend>(
    model: &Llama<B>,
    examples: &[TrainExample],
    pad_id: u32,
    layers: &[usize],
    batch_size: usize,
) -> Result<Vec<Vec<f32>>> {
    check_layers(model, layers)?;
    let d = model.hidden_size();
    let device = model.device();
    let mut sums = vec![vec![0.0f64; d]; layers.len()];
    let mut count = 0usize;
    for chunk in examples.chunks(batch_size.max(1)) {
        let len = chunk.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        if len == 0 {
            continue;
        }
        let mut ids = Vec::with_capacity(chunk.len() * len);
        let mut rows = Vec::new();
        for (b, e) in chunk.iter().enumerate() {
            ids.extend(e.ids.iter().map(|&t| t as i64));
            ids.extend(std::iter::repeat_n(pad_id as i64, len - e.ids.len()));
            rows.extend((e.n_prompt..e.ids.len()).map(|t| (b * len + t) as i64));
        }
        if rows.is_empty() {
            continue;
        }
        let n = rows.len();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [chunk.len(), len]), &device);
        let positions = int_tensor::<B>(&vec![(0..len as i64).collect(); chunk.len()], &device);
        let mask = build_attention_mask::<B>(chunk.len(), len, 0, None, &device);
        let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [n]), &device);
        let states = model.forward_layers(ids, &positions, &mask);
        for (k, &l) in layers.iter().enumerate() {
            let summed = states[l]
                .clone()
                .reshape([chunk.len() * len, d])
                .select(0, rows.clone())
                .sum_dim(0);
            for (s, v) in sums[k].iter_mut().zip(host(summed)) {
                *s += v as f64;
            }
        }
        count += n;
    }
    if count == 0 {
        return Err(CoreError::InvalidConfig(
            "steering: no example has a response token".into(),
        ));
    }
    Ok(sums
        .into_iter()
        .map(|s| s.into_iter().map(|v| (v / count as f64) as f32).collect())
        .collect())
}

/// The harmful-compliance direction at each of `layers`: the mean response activation of
/// `compliant` (harmful prompts answered) minus that of `refusing` (the same kind of prompts
/// refused). See the module docs for the source and the choices made.
pub fn steering_directions<B: Backend>(
    model: &Llama<B>,
    compliant: &[TrainExample],
    refusing: &[TrainExample],
    pad_id: u32,
    layers: &[usize],
    batch_size: usize,
) -> Result<Vec<Direction>> {
    let with = mean_response_activations(model, compliant, pad_id, layers, batch_size)?;
    let without = mean_response_activations(model, refusing, pad_id, layers, batch_size)?;
    Ok(layers
        .iter()
        .zip(with.into_iter().zip(without))
        .map(|(&l, (a, b))| (l, a.iter().zip(&b).map(|(x, y)| x - y).collect()))
        .collect())
}

/// Attaches `directions` as steering vectors named `name` (active, frozen), each scaled by
/// `coefficient`.
pub fn attach_steering<B: Backend>(
    model: &mut Llama<B>,
    name: &str,
    directions: &[Direction],
    coefficient: f64,
) -> Result<()> {
    let layers: Vec<usize> = directions.iter().map(|(l, _)| *l).collect();
    check_layers(model, &layers)?;
    let d = model.hidden_size();
    if let Some((l, v)) = directions.iter().find(|(_, v)| v.len() != d) {
        return Err(CoreError::InvalidConfig(format!(
            "steering vector `{name}` for layer {l} has {} values; the model's hidden size is {d}",
            v.len()
        )));
    }
    if !coefficient.is_finite() {
        return Err(CoreError::InvalidConfig(format!(
            "steering vector `{name}`: coefficient {coefficient} is not finite"
        )));
    }
    if steering_names(model).iter().any(|n| n == name) {
        return Err(CoreError::InvalidConfig(format!(
            "a steering vector named `{name}` is already attached"
        )));
    }
    let device = model.device();
    for (l, v) in directions {
        model.layers[*l]
            .steering
            .push(SteeringVector::new(name, v.clone(), coefficient, &device));
    }
    Ok(())
}

fn no_such(name: &str) -> CoreError {
    CoreError::InvalidConfig(format!("no steering vector named `{name}` is attached"))
}

/// The names of the attached steering vectors, each once.
pub fn steering_names<B: Backend>(model: &Llama<B>) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for s in model.layers.iter().flat_map(|l| &l.steering) {
        if !names.contains(&s.name) {
            names.push(s.name.clone());
        }
    }
    names
}

/// Switches steering vectors `name` on or off; returns how many layers hold one.
pub fn set_steering_active<B: Backend>(
    model: &mut Llama<B>,
    name: &str,
    active: bool,
) -> Result<usize> {
    let mut count = 0;
    for s in model
        .layers
        .iter_mut()
        .flat_map(|l| l.steering.iter_mut())
        .filter(|s| s.name == name)
    {
        s.active = active;
        count += 1;
    }
    if count == 0 {
        return Err(no_such(name));
    }
    Ok(count)
}

/// Removes steering vectors `name` and returns their directions (unscaled) and coefficient.
pub fn remove_steering<B: Backend>(
    model: &mut Llama<B>,
    name: &str,
) -> Result<(Vec<Direction>, f64)> {
    let mut out = Vec::new();
    let mut coefficient = 0.0;
    for (l, layer) in model.layers.iter_mut().enumerate() {
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut layer.steering)
            .into_iter()
            .partition(|s| s.name == name);
        layer.steering = kept;
        for s in gone {
            coefficient = s.coefficient;
            out.push((l, host(s.vector.val())));
        }
    }
    if out.is_empty() {
        return Err(no_such(name));
    }
    Ok((out, coefficient))
}
