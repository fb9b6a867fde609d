//! Fused operations of the decoder, with fast CPU kernels on Flex and composed tensor ops on
//! every other backend.
//!
//! The model calls these functions instead of composing Burn tensor ops; each one picks its
//! implementation from the backend type at run time:
//!
//! | backend | implementation |
//! |---|---|
//! | `Flex` (inference) | the CPU kernels of [`cpu`] on the tensors' storage |
//! | `Autodiff<Flex>` (training) | the same kernels as one autodiff node each, with their own backward kernels |
//! | anything else (ndarray, wgpu, CUDA, half precision on Flex) | the composed tensor ops, exactly what the model computed before these kernels existed |
//!
//! **Why a run-time choice, not a backend trait.** Burn's backend-extension pattern is a trait
//! the model's generic parameter must carry (`B: Backend + FusedOps`); that bound would have to
//! be written into every generic signature of the workspace (about a hundred) and through
//! `#[derive(Module)]`'s generated `AutodiffModule` impls, whose inner backend would need the
//! bound too. The types here are compared with `TypeId`, and a tensor of the matching type is
//! moved into the concrete type through `Any` — safe code, no allocation, a pointer comparison
//! per call. The per-op `Backward` implementations for `Autodiff<Flex>` are written exactly as
//! the extension pattern writes them.
//!
//! `SECVEC_KERNELS=composed` in the environment, or [`composed`] around a closure on one thread,
//! forces the composed ops everywhere: benchmarks and tests compare the two on the same backend.

mod autodiff;
pub mod cpu;
mod flex;

use std::any::{Any, TypeId};
use std::cell::Cell;
use std::sync::OnceLock;

use burn::backend::{Autodiff, Flex};
use burn::tensor::activation::{log_softmax, silu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, Int, Tensor, TensorPrimitive};

use crate::precision::Precision;

pub use cpu::adamw::AdamWStep;

/// Which implementation a backend gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Flex,
    AutodiffFlex,
    Composed,
}

thread_local! {
    static FORCE_COMPOSED: Cell<bool> = const { Cell::new(false) };
}

fn composed_by_env() -> bool {
    static ENV: OnceLock<bool> = OnceLock::new();
    *ENV.get_or_init(|| std::env::var("SECVEC_KERNELS").is_ok_and(|v| v == "composed"))
}

/// Runs `f` with the composed tensor ops on this thread (for comparisons and tests).
pub fn composed<R>(f: impl FnOnce() -> R) -> R {
    let before = FORCE_COMPOSED.with(|c| c.replace(true));
    let out = f();
    FORCE_COMPOSED.with(|c| c.set(before));
    out
}

/// Whether `B` gets the CPU kernels on this thread.
pub fn fused_for<B: Backend>() -> bool {
    route::<B>() != Route::Composed
}

fn route<B: Backend>() -> Route {
    if FORCE_COMPOSED.with(|c| c.get()) || composed_by_env() {
        return Route::Composed;
    }
    let id = TypeId::of::<B>();
    if id == TypeId::of::<Flex>() {
        Route::Flex
    } else if id == TypeId::of::<Autodiff<Flex>>() {
        Route::AutodiffFlex
    } else {
        Route::Composed
    }
}

/// Moves `t` into type `U`, which [`route`] established is its own type.
fn cast<T: 'static, U: 'static>(t: T) -> U {
    let mut slot = Some(t);
    (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<U>>()
        .and_then(Option::take)
        .expect("kernels: a backend type checked by TypeId is the same type")
}

fn flex_in<B: Backend, const D: usize>(t: Tensor<B, D>) -> burn::backend::flex::FlexTensor {
    cast::<_, Tensor<Flex, D>>(t).into_primitive().tensor()
}

fn flex_out<B: Backend, const D: usize>(t: burn::backend::flex::FlexTensor) -> Tensor<B, D> {
    cast(Tensor::<Flex, D>::from_primitive(TensorPrimitive::Float(t)))
}

fn ad_in<B: Backend, const D: usize>(t: Tensor<B, D>) -> autodiff::AdTensor {
    cast::<_, Tensor<Autodiff<Flex>, D>>(t)
        .into_primitive()
        .tensor()
}

fn ad_out<B: Backend, const D: usize>(t: autodiff::AdTensor) -> Tensor<B, D> {
    cast(Tensor::<Autodiff<Flex>, D>::from_primitive(
        TensorPrimitive::Float(t),
    ))
}

fn all_f32<B: Backend, const D: usize>(ts: &[&Tensor<B, D>]) -> bool {
    ts.iter().all(|t| t.dtype() == DType::F32)
}

/// `a · b` for 2-D f32 tensors: both cores on every shape that pays for it, a matrix–vector
/// kernel for 1–4 rows. Other dtypes take Burn's matmul.
pub fn matmul<B: Backend>(a: Tensor<B, 2>, b: Tensor<B, 2>) -> Tensor<B, 2> {
    if !all_f32(&[&a, &b]) {
        return a.matmul(b);
    }
    match route::<B>() {
        Route::Flex => flex_out(flex::matmul(&flex_in(a), &flex_in(b))),
        Route::AutodiffFlex => ad_out(autodiff::matmul(ad_in(a), ad_in(b))),
        Route::Composed => a.matmul(b),
    }
}

/// RMSNorm over the last dimension, `x / sqrt(mean(x²) + eps) · weight`, in f32 (`weight`
/// must be f32: a weight stored in half is cast by the caller).
pub fn rms_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    if x.dtype() == DType::F32 && weight.dtype() == DType::F32 {
        match route::<B>() {
            Route::Flex => {
                return flex_out(flex::rms_norm(&flex_in(x), &flex_in(weight), eps).0);
            }
            Route::AutodiffFlex => {
                return ad_out(autodiff::rms_norm(ad_in(x), ad_in(weight), eps));
            }
            Route::Composed => {}
        }
    }
    let variance = x.clone().powi_scalar(2).mean_dim(D - 1);
    let normed = x * variance.add_scalar(eps).sqrt().recip();
    normed * weight.unsqueeze::<D>()
}

/// Rotate-half RoPE of `x` `[batch, seq, heads, head_dim]`; `cos`/`sin` are each token's rows
/// of the tables, `[batch · seq, head_dim]` (see [`crate::rope::RopeTables`]).
pub fn rope<B: Backend>(x: Tensor<B, 4>, cos: &Tensor<B, 2>, sin: &Tensor<B, 2>) -> Tensor<B, 4> {
    if x.dtype() == DType::F32 {
        match route::<B>() {
            Route::Flex => {
                let y = flex::rope(
                    &flex_in(x),
                    &flex_in(cos.clone()),
                    &flex_in(sin.clone()),
                    false,
                );
                return flex_out(y);
            }
            Route::AutodiffFlex => {
                let (c, s) = (ad_in(cos.clone()), ad_in(sin.clone()));
                return ad_out(autodiff::rope(ad_in(x), c.primitive, s.primitive));
            }
            Route::Composed => {}
        }
    }
    let [batch, seq, _heads, dim] = x.dims();
    let cos = cos.clone().reshape([batch, seq, 1, dim]);
    let sin = sin.clone().reshape([batch, seq, 1, dim]);
    let half = dim / 2;
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.clone().narrow(3, half, half);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos + rotated * sin
}

/// A finite "minus infinity" for masked scores of the composed attention: a fully masked row
/// (a left-padding query) then gives a uniform distribution instead of NaNs that would leak
/// through `0 · NaN` in later layers. (The kernel gives such rows zeros.)
fn masked_value(dtype: DType) -> f32 {
    match dtype {
        DType::F16 => -65_000.0,
        _ => -1.0e30,
    }
}

/// Grouped-query attention: q `[batch, seq, heads, head_dim]` over k, v `[batch, keys,
/// kv_heads, head_dim]` (head `h` uses KV head `h / (heads / kv_heads)`, as transformers'
/// `repeat_kv`), `mask` `[batch, 1, seq, keys]` with `true` for blocked pairs. Returns `[batch,
/// seq, heads · head_dim]`, in the compute dtype of `precision` (the products `q·kᵀ` and `p·v`
/// run there; masking and softmax run in f32).
pub fn attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: &Tensor<B, 4, Bool>,
    precision: Precision,
) -> Tensor<B, 3> {
    let [batch, seq, nh, hd] = q.dims();
    let scale = 1.0 / (hd as f64).sqrt();
    if precision == Precision::F32 && all_f32(&[&q, &k, &v]) {
        let route = route::<B>();
        if route != Route::Composed {
            let data = mask.to_data();
            assert!(
                matches!(data.dtype, DType::Bool(_) | DType::U8),
                "attention mask must be boolean"
            );
            let bytes = data.as_bytes().to_vec();
            return match route {
                Route::Flex => {
                    let (out, _) = flex::attention(
                        &flex_in(q),
                        &flex_in(k),
                        &flex_in(v),
                        &bytes,
                        scale as f32,
                        false,
                    );
                    flex_out(out)
                }
                _ => ad_out(autodiff::attention(
                    ad_in(q),
                    ad_in(k),
                    ad_in(v),
                    bytes,
                    scale as f32,
                )),
            };
        }
    }
    let p = precision;
    let nkv = k.dims()[2];
    let total = k.dims()[1];
    let group = nh / nkv;
    let q = p.to_compute(q).swap_dims(1, 2);
    let k = p.to_compute(k).swap_dims(1, 2);
    let v = p.to_compute(v).swap_dims(1, 2);
    // The `group` query heads sharing a KV head are stacked along the sequence axis, so K/V
    // are not copied per query head.
    let q = q.reshape([batch, nkv, group * seq, hd]);
    let scores = p
        .to_f32(q.matmul(k.swap_dims(2, 3)))
        .mul_scalar(scale)
        .reshape([batch, nh, seq, total]);
    let fill = masked_value(scores.dtype());
    let scores = scores.mask_fill(mask.clone().expand([batch, nh, seq, total]), fill);
    let probs = p.to_compute(softmax(scores, 3).reshape([batch, nkv, group * seq, total]));
    probs
        .matmul(v)
        .reshape([batch, nh, seq, hd])
        .swap_dims(1, 2)
        .reshape([batch, seq, nh * hd])
}

/// The SwiGLU gate `silu(gate) · up`.
pub fn swiglu<B: Backend, const D: usize>(gate: Tensor<B, D>, up: Tensor<B, D>) -> Tensor<B, D> {
    if all_f32(&[&gate, &up]) {
        match route::<B>() {
            Route::Flex => return flex_out(flex::swiglu(&flex_in(gate), &flex_in(up))),
            Route::AutodiffFlex => return ad_out(autodiff::swiglu(ad_in(gate), ad_in(up))),
            Route::Composed => {}
        }
    }
    silu(gate) * up
}

/// `Σ_r −log softmax(logits_r)[targets_r]` over the rows of `logits` `[rows, vocab]`, as a
/// one-element tensor.
pub fn cross_entropy_sum<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> Tensor<B, 1> {
    if logits.dtype() == DType::F32 {
        let route = route::<B>();
        if route != Route::Composed {
            let vocab = logits.dims()[1];
            let ids: Vec<usize> = targets
                .into_data()
                .iter::<i64>()
                .map(|id| {
                    assert!(
                        (0..vocab as i64).contains(&id),
                        "cross_entropy_sum: target id {id} outside the vocabulary ({vocab})"
                    );
                    id as usize
                })
                .collect();
            return match route {
                Route::Flex => flex_out(flex::cross_entropy_sum(&flex_in(logits), &ids).0),
                _ => ad_out(autodiff::cross_entropy_sum(ad_in(logits), ids)),
            };
        }
    }
    let n = targets.dims()[0];
    let logp = log_softmax(logits, 1);
    logp.gather(1, targets.unsqueeze_dim(1))
        .reshape([n])
        .sum()
        .neg()
}

/// `Σ x²` of a tensor, on the host (for gradient norms).
pub fn sum_squares<B: Backend, const D: usize>(x: Tensor<B, D>) -> f64 {
    if x.dtype() == DType::F32 && route::<B>() == Route::Flex {
        return cpu::adamw::sum_squares(&flex::contiguous(&flex_in(x)));
    }
    x.powi_scalar(2)
        .sum()
        .into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .expect("f64 after convert")[0]
}

/// One AdamW step of a parameter (see [`AdamWStep`]): returns the new parameter and moments.
/// On Flex it is one pass, in place when the tensors are not shared.
pub fn adamw_update<B: Backend, const D: usize>(
    param: Tensor<B, D>,
    grad: Tensor<B, D>,
    m: Tensor<B, D>,
    v: Tensor<B, D>,
    s: AdamWStep,
) -> (Tensor<B, D>, Tensor<B, D>, Tensor<B, D>) {
    if all_f32(&[&param, &grad, &m, &v]) && route::<B>() == Route::Flex {
        let mut p = flex_in(param).to_contiguous();
        let mut mt = flex_in(m).to_contiguous();
        let mut vt = flex_in(v).to_contiguous();
        let g = flex_in(grad);
        cpu::adamw::adamw_update(
            p.storage_mut::<f32>(),
            &flex::contiguous(&g),
            mt.storage_mut::<f32>(),
            vt.storage_mut::<f32>(),
            s,
        );
        return (flex_out(p), flex_out(mt), flex_out(vt));
    }
    let g = grad.mul_scalar(s.grad_scale as f64);
    let m = m.mul_scalar(s.beta1 as f64) + g.clone().mul_scalar(1.0 - s.beta1 as f64);
    let v = v.mul_scalar(s.beta2 as f64) + g.square().mul_scalar(1.0 - s.beta2 as f64);
    let delta = m.clone().div_scalar(s.bias1 as f64).div(
        v.clone()
            .div_scalar(s.bias2 as f64)
            .sqrt()
            .add_scalar(s.eps as f64),
    );
    let p =
        param.mul_scalar(1.0 - s.lr as f64 * s.weight_decay as f64) - delta.mul_scalar(s.lr as f64);
    (p, m, v)
}

/// Keeps freed memory for reuse instead of returning large blocks to the system.
///
/// glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh `mmap`
/// and unmaps it on free, so each activation buffer of a training step is new memory: page
/// faults and kernel page zeroing, which the CPU profile of a training run put at several
/// percent. Raising the threshold keeps those buffers in the heap, where the next step reuses
/// them. Call once at start-up, before the allocations it should affect (the command line does);
/// a no-op elsewhere than on glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before the threads that
    // allocate exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

#[cfg(test)]
mod tests;
