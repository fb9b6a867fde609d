//! Causal-LM loss on the response tokens only.

use burn::tensor::{Tensor, backend::Backend};

use secvec_models::Llama;
use secvec_models::attention::build_attention_mask;
use secvec_models::transformer::int_tensor;

use super::batch::Batch;

/// Sum of the negative log-likelihoods of the batch's trained tokens (a scalar tensor).
///
/// The LM head runs only at trained positions: the same numbers as masking a full
/// `[batch, len, vocab]` log-softmax, for a fraction of the head's cost and memory.
pub fn response_nll_sum<B: Backend>(model: &Llama<B>, batch: &Batch<B>) -> Tensor<B, 1> {
    let [b, len] = batch.ids.dims();
    let device = batch.ids.device();
    let positions = int_tensor::<B>(&vec![(0..len as i64).collect(); b], &device);
    let mask = build_attention_mask::<B>(b, len, 0, None, &device);
    let hidden = model.forward_hidden(batch.ids.clone(), &positions, &mask, None);
    let d = hidden.dims()[2];
    let picked = hidden
        .reshape([b * len, d])
        .select(0, batch.positions.clone())
        .unsqueeze_dim::<3>(0);
    let logits = model.lm_head(picked).squeeze_dim::<2>(0);
    secvec_models::kernels::cross_entropy_sum(logits, batch.targets.clone())
}
