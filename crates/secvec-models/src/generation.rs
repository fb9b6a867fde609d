//! Batched autoregressive generation with the KV cache, left padding and stop tokens.

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};

use crate::attention::build_attention_mask;
use crate::error::{ModelError, Result};
use crate::sampling::{Sampler, Sampling};
use crate::transformer::{Llama, int_tensor, positions_from_mask};

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Generation of a row ends after it emits one of these (the stop token is kept).
    pub stop_tokens: Vec<u32>,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            sampling: Sampling::Greedy,
            stop_tokens: Vec::new(),
        }
    }
}

/// One row's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// New tokens, ending with the stop token if one was emitted.
    pub tokens: Vec<u32>,
    /// Whether a stop token ended the row (rather than `max_new_tokens`).
    pub stopped: bool,
}

/// Logits of the last position of every row, on the host: `batch · vocab` values, row-major.
fn last_logits<B: Backend>(model: &Llama<B>, hidden: Tensor<B, 3>) -> Vec<f32> {
    let [batch, seq, _] = hidden.dims();
    let last = hidden.narrow(1, seq - 1, 1);
    let logits = model.lm_head(last).reshape([batch, model.vocab_size()]);
    logits
        .into_data()
        .convert::<f32>()
        .into_vec()
        .expect("f32 after convert")
}

/// Refuses logits with a NaN or an infinity: greedy decoding would silently pick a token anyway
/// (NaN never wins an argmax), and the evaluation would report rates of a broken model.
/// `rows[slot]` is the prompt of batch slot `slot`.
fn check_finite(logits: &[f32], vocab: usize, rows: &[usize], step: usize) -> Result<()> {
    match logits
        .chunks(vocab)
        .position(|row| row.iter().any(|x| !x.is_finite()))
    {
        Some(slot) => Err(ModelError::NonFiniteLogits {
            step,
            row: rows[slot],
        }),
        None => Ok(()),
    }
}

/// Generates continuations of `prompts` (token ids) as one batch. Rows are left-padded with
/// `pad_id`; finished rows leave the batch so that the rest run faster. Non-finite logits stop
/// generation with [`ModelError::NonFiniteLogits`] naming the prompt and the step.
pub fn generate<B: Backend>(
    model: &Llama<B>,
    prompts: &[Vec<u32>],
    pad_id: u32,
    config: &GenerationConfig,
) -> Result<Vec<Generated>> {
    config.sampling.validate().map_err(ModelError::Generation)?;
    if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
        return Err(ModelError::Generation(format!("prompt {i} is empty")));
    }
    let mut outputs: Vec<Generated> = prompts
        .iter()
        .map(|_| Generated {
            tokens: Vec::new(),
            stopped: false,
        })
        .collect();
    if prompts.is_empty() || config.max_new_tokens == 0 {
        return Ok(outputs);
    }
    let max_len = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let limit = model.rope.max_positions;
    if max_len + config.max_new_tokens > limit {
        return Err(ModelError::Generation(format!(
            "prompt of {max_len} tokens + {} new tokens exceeds the model's {limit} positions",
            config.max_new_tokens
        )));
    }
    let vocab = model.vocab_size() as u32;
    if let Some(t) = prompts.iter().flatten().find(|&&t| t >= vocab) {
        return Err(ModelError::Generation(format!(
            "token id {t} is outside the vocabulary ({vocab})"
        )));
    }
    let device = model.device();
    let mut samplers: Vec<Sampler> = prompts
        .iter()
        .enumerate()
        .map(|(i, _)| {
            // Each row gets its own stream so that results do not depend on batch composition.
            let sampling = match config.sampling.clone() {
                Sampling::TopP {
                    temperature,
                    top_p,
                    seed,
                } => Sampling::TopP {
                    temperature,
                    top_p,
                    seed: seed.wrapping_add(i as u64),
                },
                s => s,
            };
            Sampler::new(sampling)
        })
        .collect();

    // Prefill: left-pad every row to the longest prompt.
    let mut valid: Vec<Vec<bool>> = prompts
        .iter()
        .map(|p| {
            let mut v = vec![false; max_len - p.len()];
            v.extend(std::iter::repeat_n(true, p.len()));
            v
        })
        .collect();
    let ids: Vec<Vec<i64>> = prompts
        .iter()
        .map(|p| {
            let mut row = vec![pad_id as i64; max_len - p.len()];
            row.extend(p.iter().map(|&t| t as i64));
            row
        })
        .collect();
    let positions = int_tensor::<B>(&positions_from_mask(&valid, None), &device);
    let mask = build_attention_mask::<B>(prompts.len(), max_len, 0, Some(&valid), &device);
    let mut cache = model.new_cache_with_capacity(max_len + config.max_new_tokens);
    let hidden = model.forward_hidden(
        int_tensor::<B>(&ids, &device),
        &positions,
        &mask,
        Some(&mut cache),
    );
    let mut logits = last_logits(model, hidden);
    let mut next_pos: Vec<i64> = prompts.iter().map(|p| p.len() as i64).collect();
    // Batch slot -> prompt index.
    let mut rows: Vec<usize> = (0..prompts.len()).collect();

    for step in 0..config.max_new_tokens {
        check_finite(&logits, model.vocab_size(), &rows, step)?;
        let mut keep = Vec::with_capacity(rows.len());
        let mut next_tokens = Vec::with_capacity(rows.len());
        for (slot, &row) in rows.iter().enumerate() {
            let vocab_size = model.vocab_size();
            let token = samplers[row].sample(&logits[slot * vocab_size..(slot + 1) * vocab_size]);
            let out = &mut outputs[row];
            out.tokens.push(token);
            if config.stop_tokens.contains(&token) {
                out.stopped = true;
            } else {
                keep.push(slot);
                next_tokens.push(token);
            }
        }
        if keep.is_empty() || step + 1 == config.max_new_tokens {
            break;
        }
        if keep.len() != rows.len() {
            let idx: Vec<i64> = keep.iter().map(|&s| s as i64).collect();
            let n = idx.len();
            cache.retain_rows(Tensor::<B, 1, Int>::from_data(
                TensorData::new(idx, [n]),
                &device,
            ));
            valid = keep.iter().map(|&s| valid[s].clone()).collect();
            next_pos = keep.iter().map(|&s| next_pos[s]).collect();
            rows = keep.iter().map(|&s| rows[s]).collect();
        }
        for v in valid.iter_mut() {
            v.push(true);
        }
        let batch = rows.len();
        let ids: Vec<Vec<i64>> = next_tokens.iter().map(|&t| vec![t as i64]).collect();
        let positions: Vec<Vec<i64>> = next_pos.iter().map(|&p| vec![p]).collect();
        let past = cache.len();
        let mask = build_attention_mask::<B>(batch, 1, past, Some(&valid), &device);
        let hidden = model.forward_hidden(
            int_tensor::<B>(&ids, &device),
            &int_tensor::<B>(&positions, &device),
            &mask,
            Some(&mut cache),
        );
        logits = last_logits(model, hidden);
        for p in next_pos.iter_mut() {
            *p += 1;
        }
    }
    Ok(outputs)
}
