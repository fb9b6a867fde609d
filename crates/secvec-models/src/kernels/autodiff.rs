//! The kernels under `Autodiff<Flex>`: each op is one node of the autodiff graph whose backward
//! step calls the matching backward kernel (Burn's backend-extension mechanism: a
//! [`Backward`] implementation per op, as burn-autodiff writes its own ops).
//!
//! Every op is compute-bound in burn-autodiff's sense: its state keeps what the backward pass
//! needs (inputs, saved statistics) instead of recomputing the forward pass.

use std::sync::Arc;

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::tensor::ops::FloatTensor;

use super::cpu::{norm, swiglu, xent};
use super::flex;

/// The float primitive of `Autodiff<Flex>`.
pub type AdTensor = FloatTensor<burn::backend::Autodiff<Flex>>;

// --- matmul -------------------------------------------------------------------------------

#[derive(Debug)]
struct Matmul;

impl Backward<Flex, 2> for Matmul {
    /// The left input when the right one needs a gradient, and the other way round.
    type State = (Option<FlexTensor>, Option<FlexTensor>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (a, b) = ops.state;
        let dc = grads.consume::<Flex>(&ops.node);
        let [pa, pb] = ops.parents;
        if let Some(node) = pa {
            let b = b.expect("kept when a needs a gradient");
            grads.register::<Flex>(node.id, flex::matmul(&dc, &b.transpose(0, 1)));
        }
        if let Some(node) = pb {
            let a = a.expect("kept when b needs a gradient");
            grads.register::<Flex>(node.id, flex::matmul(&a.transpose(0, 1), &dc));
        }
    }
}

/// `a · b` for 2-D tensors.
pub fn matmul(a: AdTensor, b: AdTensor) -> AdTensor {
    let (a_tracked, b_tracked) = (a.is_tracked(), b.is_tracked());
    match Matmul
        .prepare::<NoCheckpointing>([a.node.clone(), b.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let out = flex::matmul(&a.primitive, &b.primitive);
            let state = (
                b_tracked.then(|| a.primitive.clone()),
                a_tracked.then(|| b.primitive.clone()),
            );
            prep.finish(state, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(flex::matmul(&a.primitive, &b.primitive)),
    }
}

// --- RMSNorm ------------------------------------------------------------------------------

#[derive(Debug)]
struct RmsNorm;

impl Backward<Flex, 2> for RmsNorm {
    type State = (FlexTensor, FlexTensor, Arc<Vec<f32>>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, w, rstd) = ops.state;
        let dy = grads.consume::<Flex>(&ops.node);
        let [px, pw] = ops.parents;
        let dims = x.layout().shape().to_vec();
        let (dx, dw) = norm::rms_norm_backward(
            &flex::contiguous(&dy),
            &flex::contiguous(&x),
            &flex::contiguous(&w),
            &rstd,
            pw.is_some(),
        );
        if let Some(node) = px {
            grads.register::<Flex>(node.id, flex::from_vec(dx, &dims));
        }
        if let (Some(node), Some(dw)) = (pw, dw) {
            let d = dw.len();
            grads.register::<Flex>(node.id, flex::from_vec(dw, &[d]));
        }
    }
}

/// RMSNorm of `x` (any rank, over the last dimension) with weight `w`.
pub fn rms_norm(x: AdTensor, w: AdTensor, eps: f64) -> AdTensor {
    match RmsNorm
        .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (y, rstd) = flex::rms_norm(&x.primitive, &w.primitive, eps);
            prep.finish((x.primitive, w.primitive, Arc::new(rstd)), y)
        }
        OpsKind::UnTracked(prep) => prep.finish(flex::rms_norm(&x.primitive, &w.primitive, eps).0),
    }
}

// --- RoPE ---------------------------------------------------------------------------------

#[derive(Debug)]
struct Rope;

impl Backward<Flex, 1> for Rope {
    /// The cos/sin tables (constants: they get no gradient).
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (cos, sin) = ops.state;
        let dy = grads.consume::<Flex>(&ops.node);
        if let [Some(node)] = ops.parents {
            grads.register::<Flex>(node.id, flex::rope(&dy, &cos, &sin, true));
        }
    }
}

/// RoPE of `x` `[batch, seq, heads, head_dim]` with per-token tables `[batch · seq, head_dim]`.
pub fn rope(x: AdTensor, cos: FlexTensor, sin: FlexTensor) -> AdTensor {
    match Rope
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let y = flex::rope(&x.primitive, &cos, &sin, false);
            prep.finish((cos, sin), y)
        }
        OpsKind::UnTracked(prep) => prep.finish(flex::rope(&x.primitive, &cos, &sin, false)),
    }
}

// --- attention ----------------------------------------------------------------------------

#[derive(Debug)]
struct Attention;

#[derive(Debug, Clone)]
struct AttentionState {
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    out: FlexTensor,
    probs: Arc<Vec<f32>>,
    mask: Arc<Vec<u8>>,
    scale: f32,
}

impl Backward<Flex, 3> for Attention {
    type State = AttentionState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let s = ops.state;
        let d_out = grads.consume::<Flex>(&ops.node);
        let (dq, dk, dv) =
            flex::attention_backward(&d_out, &s.q, &s.k, &s.v, &s.out, &s.probs, &s.mask, s.scale);
        let [pq, pk, pv] = ops.parents;
        for (node, grad) in [(pq, dq), (pk, dk), (pv, dv)] {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, grad);
            }
        }
    }
}

/// Attention of q `[b, s, h, d]` over k, v `[b, t, kvh, d]` with a `[b, 1, s, t]` mask (as
/// bytes), scaled by `scale`; the output is `[b, s, h · d]`.
pub fn attention(q: AdTensor, k: AdTensor, v: AdTensor, mask: Vec<u8>, scale: f32) -> AdTensor {
    match Attention
        .prepare::<NoCheckpointing>([q.node.clone(), k.node.clone(), v.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (out, probs) =
                flex::attention(&q.primitive, &k.primitive, &v.primitive, &mask, scale, true);
            let state = AttentionState {
                q: q.primitive,
                k: k.primitive,
                v: v.primitive,
                out: out.clone(),
                probs: Arc::new(probs.expect("asked for")),
                mask: Arc::new(mask),
                scale,
            };
            prep.finish(state, out)
        }
        OpsKind::UnTracked(prep) => {
            let (out, _) = flex::attention(
                &q.primitive,
                &k.primitive,
                &v.primitive,
                &mask,
                scale,
                false,
            );
            prep.finish(out)
        }
    }
}

// --- SwiGLU -------------------------------------------------------------------------------

#[derive(Debug)]
struct SwiGlu;

impl Backward<Flex, 2> for SwiGlu {
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (g, u) = ops.state;
        let dy = grads.consume::<Flex>(&ops.node);
        let dims = g.layout().shape().to_vec();
        let (dg, du) = swiglu::swiglu_backward(
            &flex::contiguous(&dy),
            &flex::contiguous(&g),
            &flex::contiguous(&u),
        );
        let [pg, pu] = ops.parents;
        if let Some(node) = pg {
            grads.register::<Flex>(node.id, flex::from_vec(dg, &dims));
        }
        if let Some(node) = pu {
            grads.register::<Flex>(node.id, flex::from_vec(du, &dims));
        }
    }
}

/// `silu(g) · u`.
pub fn swiglu(g: AdTensor, u: AdTensor) -> AdTensor {
    match SwiGlu
        .prepare::<NoCheckpointing>([g.node.clone(), u.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let y = flex::swiglu(&g.primitive, &u.primitive);
            prep.finish((g.primitive, u.primitive), y)
        }
        OpsKind::UnTracked(prep) => prep.finish(flex::swiglu(&g.primitive, &u.primitive)),
    }
}

// --- cross-entropy ------------------------------------------------------------------------

#[derive(Debug)]
struct CrossEntropy;

impl Backward<Flex, 1> for CrossEntropy {
    type State = (FlexTensor, Arc<Vec<usize>>, Arc<Vec<f32>>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (mut logits, targets, lse) = ops.state;
        let g = flex::scalar(&grads.consume::<Flex>(&ops.node));
        if let [Some(node)] = ops.parents {
            let dims = logits.layout().shape().to_vec();
            if !logits.is_contiguous() || logits.layout().start_offset() != 0 {
                logits = logits.to_contiguous();
            }
            // The saved logits are normally this node's alone by now: the gradient overwrites
            // them (copy-on-write otherwise).
            let data = logits.storage_mut::<f32>();
            let n = dims[0] * dims[1];
            xent::cross_entropy_backward_in_place(&mut data[..n], dims[1], &targets, &lse, g);
            grads.register::<Flex>(node.id, logits);
        }
    }
}

/// `Σ_r logsumexp(logits_r) − logits_r[targets_r]` as a one-element tensor.
pub fn cross_entropy_sum(logits: AdTensor, targets: Vec<usize>) -> AdTensor {
    match CrossEntropy
        .prepare::<NoCheckpointing>([logits.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (nll, lse) = flex::cross_entropy_sum(&logits.primitive, &targets);
            prep.finish((logits.primitive, Arc::new(targets), Arc::new(lse)), nll)
        }
        OpsKind::UnTracked(prep) => {
            prep.finish(flex::cross_entropy_sum(&logits.primitive, &targets).0)
        }
    }
}
