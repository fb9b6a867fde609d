//! Causal-LM loss on the response tokens only.

use burn::tensor::activation::log_softmax;
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
    secvec_models::kernels::cross_entropy_sum(
        response_logits(model, batch, None),
        batch.targets.clone(),
    )
}

/// [`response_nll_sum`] with `attn_deltas[i]` `[batch, len, hidden]` added to the attention
/// output of layer `i` (Vaccine's perturbed pass, [`crate::defence::vaccine`]).
pub fn response_nll_sum_perturbed<B: Backend>(
    model: &Llama<B>,
    batch: &Batch<B>,
    attn_deltas: &[Tensor<B, 3>],
) -> Tensor<B, 1> {
    secvec_models::kernels::cross_entropy_sum(
        response_logits(model, batch, Some(attn_deltas)),
        batch.targets.clone(),
    )
}

/// The logits `[n_targets, vocab]` at the batch's trained positions: the model run over the
/// right-padded batch (the causal mask keeps the padding out), the LM head applied only there.
fn response_logits<B: Backend>(
    model: &Llama<B>,
    batch: &Batch<B>,
    attn_deltas: Option<&[Tensor<B, 3>]>,
) -> Tensor<B, 2> {
    let [b, len] = batch.ids.dims();
    let device = batch.ids.device();
    let positions = int_tensor::<B>(&vec![(0..len as i64).collect(); b], &device);
    let mask = build_attention_mask::<B>(b, len, 0, None, &device);
    let hidden = match attn_deltas {
        None => model.forward_hidden(batch.ids.clone(), &positions, &mask, None),
        Some(d) => model.forward_hidden_perturbed(batch.ids.clone(), &positions, &mask, d),
    };
    let d = hidden.dims()[2];
    let picked = hidden
        .reshape([b * len, d])
        .select(0, batch.positions.clone())
        .unsqueeze_dim::<3>(0);
    model.lm_head(picked).squeeze_dim::<2>(0)
}

/// The negative log-likelihood of each example's trained tokens, summed per example (in the
/// batch's order, on the host): the same tokens and the same numbers that [`response_nll_sum`]
/// adds up for training. Evaluation's response NLLs are computed with it, so a training loss and
/// an evaluated NLL of the same pair cannot disagree in what they count.
pub fn response_nll_per_example<B: Backend>(model: &Llama<B>, batch: &Batch<B>) -> Vec<f64> {
    let [b, len] = batch.ids.dims();
    let mut sums = vec![0.0; b];
    if batch.n_targets == 0 {
        return sums;
    }
    let logp = log_softmax(response_logits(model, batch, None), 1)
        .gather(1, batch.targets.clone().unsqueeze_dim(1))
        .into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .unwrap_or_default();
    let rows = batch
        .positions
        .to_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .unwrap_or_default();
    for (lp, pos) in logp.iter().zip(&rows) {
        sums[*pos as usize / len] -= lp;
    }
    sums
}
