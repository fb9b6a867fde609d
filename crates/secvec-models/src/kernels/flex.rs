//! The kernels on Flex's tensor primitive: reading `FlexTensor` storage as `f32` slices or
//! strided matrix views, and wrapping kernel outputs as new tensors without a copy.

use std::borrow::Cow;

use burn::backend::flex::{FlexTensor, Layout};
use burn::tensor::{DType, Shape};

use super::cpu::attention::{Dims, KvView};
use super::cpu::gemm::Mat;
use super::cpu::{attention, gemm, norm, rope, swiglu, xent};

/// A new contiguous f32 tensor owning `data` (no copy: `Bytes::from_elems` keeps the vector's
/// allocation).
pub fn from_vec(data: Vec<f32>, dims: &[usize]) -> FlexTensor {
    debug_assert_eq!(data.len(), dims.iter().product::<usize>());
    FlexTensor::new(
        burn::tensor::Bytes::from_elems(data),
        Layout::contiguous(Shape::from(dims.to_vec())),
        DType::F32,
    )
}

/// The elements of an f32 tensor in row-major order: borrowed when the layout is contiguous,
/// copied otherwise.
pub fn contiguous(t: &FlexTensor) -> Cow<'_, [f32]> {
    match t.layout().contiguous_offsets() {
        Some((start, end)) => Cow::Borrowed(&t.storage::<f32>()[start..end]),
        None => Cow::Owned(t.to_contiguous().storage::<f32>().to_vec()),
    }
}

/// A 2-D f32 tensor as a strided view, when its strides are non-negative (Flex's transposes
/// and narrows are such views); `None` for anything else.
pub fn as_mat(t: &FlexTensor) -> Option<Mat<'_>> {
    let l = t.layout();
    let s = l.strides();
    if l.num_dims() != 2 || s[0] < 0 || s[1] < 0 {
        return None;
    }
    let dims = l.shape();
    let m = Mat {
        data: t.storage::<f32>(),
        offset: l.start_offset(),
        rows: dims[0],
        cols: dims[1],
        rs: s[0] as usize,
        cs: s[1] as usize,
    };
    m.in_bounds().then_some(m)
}

/// `a · b` for 2-D f32 tensors.
pub fn matmul(a: &FlexTensor, b: &FlexTensor) -> FlexTensor {
    let ca;
    let cb;
    let am = match as_mat(a) {
        Some(m) => m,
        None => {
            ca = a.to_contiguous();
            as_mat(&ca).expect("contiguous")
        }
    };
    let bm = match as_mat(b) {
        Some(m) => m,
        None => {
            cb = b.to_contiguous();
            as_mat(&cb).expect("contiguous")
        }
    };
    let (m, n) = (am.rows, bm.cols);
    from_vec(gemm::matmul(am, bm), &[m, n])
}

/// RMSNorm over the last dimension; returns the output and the saved `rstd`.
pub fn rms_norm(x: &FlexTensor, w: &FlexTensor, eps: f64) -> (FlexTensor, Vec<f32>) {
    let dims = x.layout().shape().to_vec();
    let (y, rstd) = norm::rms_norm(&contiguous(x), &contiguous(w), eps as f32);
    (from_vec(y, &dims), rstd)
}

/// RoPE on `[batch, seq, heads, head_dim]` with `[batch · seq, head_dim]` tables.
pub fn rope(x: &FlexTensor, cos: &FlexTensor, sin: &FlexTensor, transpose: bool) -> FlexTensor {
    let dims = x.layout().shape().to_vec();
    let (heads, d) = (dims[2], dims[3]);
    let (xs, c, s) = (contiguous(x), contiguous(cos), contiguous(sin));
    let y = if transpose {
        rope::rope_backward(&xs, heads, d, &c, &s)
    } else {
        rope::rope(&xs, heads, d, &c, &s)
    };
    from_vec(y, &dims)
}

/// Keys or values `[batch, keys, kv_heads, head_dim]` as a strided view (copied first if the
/// last dimension is not contiguous).
pub fn kv_view(t: &FlexTensor) -> Cow<'_, FlexTensor> {
    let l = t.layout();
    let s = l.strides();
    if l.num_dims() == 4 && s[3] == 1 && s[..3].iter().all(|&x| x >= 0) {
        Cow::Borrowed(t)
    } else {
        Cow::Owned(t.to_contiguous())
    }
}

fn as_kv(t: &FlexTensor) -> KvView<'_> {
    let l = t.layout();
    let s = l.strides();
    KvView {
        data: t.storage::<f32>(),
        offset: l.start_offset(),
        sb: s[0] as usize,
        sj: s[1] as usize,
        sh: s[2] as usize,
    }
}

/// Attention dimensions from the shapes of q `[b, s, h, d]` and k `[b, t, kvh, d]`.
pub fn attention_dims(q: &FlexTensor, k: &FlexTensor) -> Dims {
    let qd = q.layout().shape();
    let kd = k.layout().shape();
    Dims {
        batch: qd[0],
        seq: qd[1],
        heads: qd[2],
        head_dim: qd[3],
        keys: kd[1],
        kv_heads: kd[2],
    }
}

/// Attention forward; the output is `[batch, seq, heads · head_dim]`, the probabilities come
/// back when `keep_probs`.
pub fn attention(
    q: &FlexTensor,
    k: &FlexTensor,
    v: &FlexTensor,
    mask: &[u8],
    scale: f32,
    keep_probs: bool,
) -> (FlexTensor, Option<Vec<f32>>) {
    let dims = attention_dims(q, k);
    let (kc, vc) = (kv_view(k), kv_view(v));
    let (out, probs) = attention::attention(
        &contiguous(q),
        as_kv(&kc),
        as_kv(&vc),
        mask,
        dims,
        scale,
        keep_probs,
    );
    (
        from_vec(out, &[dims.batch, dims.seq, dims.heads * dims.head_dim]),
        probs,
    )
}

/// Attention backward: `(dq, dk, dv)` shaped as q, k and v.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    d_out: &FlexTensor,
    q: &FlexTensor,
    k: &FlexTensor,
    v: &FlexTensor,
    out: &FlexTensor,
    probs: &[f32],
    mask: &[u8],
    scale: f32,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let dims = attention_dims(q, k);
    let (kc, vc) = (kv_view(k), kv_view(v));
    let (dq, dk, dv) = attention::attention_backward(
        &contiguous(d_out),
        &contiguous(q),
        as_kv(&kc),
        as_kv(&vc),
        &contiguous(out),
        probs,
        mask,
        dims,
        scale,
    );
    let kv_dims = [dims.batch, dims.keys, dims.kv_heads, dims.head_dim];
    (
        from_vec(dq, &[dims.batch, dims.seq, dims.heads, dims.head_dim]),
        from_vec(dk, &kv_dims),
        from_vec(dv, &kv_dims),
    )
}

/// `silu(g) · u`.
pub fn swiglu(g: &FlexTensor, u: &FlexTensor) -> FlexTensor {
    let dims = g.layout().shape().to_vec();
    from_vec(swiglu::swiglu(&contiguous(g), &contiguous(u)), &dims)
}

/// The summed cross-entropy as a one-element tensor, and the rows' log-sum-exp.
pub fn cross_entropy_sum(logits: &FlexTensor, targets: &[usize]) -> (FlexTensor, Vec<f32>) {
    let vocab = logits.layout().shape()[1];
    let (nll, lse) = xent::cross_entropy_sum(&contiguous(logits), vocab, targets);
    (from_vec(vec![nll as f32], &[1]), lse)
}

/// One-element f32 tensor's value.
pub fn scalar(t: &FlexTensor) -> f32 {
    contiguous(t)[0]
}
