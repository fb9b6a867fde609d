//! Turning (prompt, response) pairs into token sequences and padded training batches.

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use serde::{Deserialize, Serialize};

use secvec_models::{Message, TextTokenizer};

use crate::error::Result;

/// One supervised example: a user prompt and the assistant's response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextPair {
    pub prompt: String,
    pub response: String,
}

impl TextPair {
    pub fn new(prompt: impl Into<String>, response: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            response: response.into(),
        }
    }
}

/// A tokenised example: `ids[..n_prompt]` is the chat-formatted prompt (no loss), the rest the
/// response and its end-of-turn token (loss).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainExample {
    pub ids: Vec<u32>,
    pub n_prompt: usize,
}

impl TrainExample {
    /// Tokens whose prediction is trained (`len - n_prompt`).
    pub fn n_target(&self) -> usize {
        self.ids.len().saturating_sub(self.n_prompt)
    }
}

/// Tokenises pairs with the model's chat template: prompt = template(user) with the generation
/// prompt; full = prompt + response + the end-of-turn token. Sequences longer than `max_len` are
/// cut at the end (prompts longer than `max_len - 1` keep their last tokens).
pub fn encode_pairs(
    tok: &TextTokenizer,
    pairs: &[TextPair],
    system: Option<&str>,
    max_len: usize,
) -> Result<Vec<TrainExample>> {
    let eos_text = tok
        .special
        .eos
        .first()
        .and_then(|&id| tok.inner().id_to_token(id))
        .unwrap_or_default();
    pairs
        .iter()
        .map(|p| {
            let mut msgs = Vec::new();
            if let Some(s) = system {
                msgs.push(Message::system(s));
            }
            msgs.push(Message::user(&p.prompt));
            let prompt = tok.apply_chat_template(&msgs, true)?;
            let mut prompt_ids = tok.encode(&prompt)?;
            let full = tok.encode(&format!("{prompt}{}{eos_text}", p.response))?;
            // The response's first token may merge with the prompt's end; use the common prefix.
            let common = prompt_ids
                .iter()
                .zip(&full)
                .take_while(|(a, b)| a == b)
                .count();
            prompt_ids.truncate(common);
            let mut ids = full;
            let mut n_prompt = common;
            if n_prompt >= max_len {
                let cut = n_prompt - (max_len - 1);
                ids.drain(..cut);
                n_prompt -= cut;
            }
            ids.truncate(max_len);
            Ok(TrainExample { ids, n_prompt })
        })
        .collect()
}

/// A right-padded batch on the device.
pub struct Batch<B: Backend> {
    /// `[batch, len]` input ids.
    pub ids: Tensor<B, 2, Int>,
    /// Flat indices (into `batch * len`) of the positions whose next token is trained.
    pub positions: Tensor<B, 1, Int>,
    /// The next token at each of those positions.
    pub targets: Tensor<B, 1, Int>,
    /// Number of trained tokens.
    pub n_targets: usize,
    /// Number of real (non-padding) input tokens.
    pub n_tokens: usize,
}

/// Builds a right-padded batch; padding sits after every real token, so the causal mask alone
/// keeps it out of every trained position.
pub fn make_batch<B: Backend>(
    examples: &[&TrainExample],
    pad_id: u32,
    device: &B::Device,
) -> Batch<B> {
    let len = examples.iter().map(|e| e.ids.len()).max().unwrap_or(1);
    let mut ids = Vec::with_capacity(examples.len() * len);
    let mut positions = Vec::new();
    let mut targets = Vec::new();
    let mut n_tokens = 0;
    for (b, e) in examples.iter().enumerate() {
        ids.extend(e.ids.iter().map(|&t| t as i64));
        ids.extend(std::iter::repeat_n(pad_id as i64, len - e.ids.len()));
        n_tokens += e.ids.len();
        for t in e.n_prompt.max(1)..e.ids.len() {
            positions.push((b * len + t - 1) as i64);
            targets.push(e.ids[t] as i64);
        }
    }
    let n = positions.len();
    Batch {
        ids: Tensor::from_data(TensorData::new(ids, [examples.len(), len]), device),
        positions: Tensor::from_data(TensorData::new(positions, [n]), device),
        targets: Tensor::from_data(TensorData::new(targets, [n]), device),
        n_targets: n,
        n_tokens,
    }
}
