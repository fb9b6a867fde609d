//! Each fused op against the composed tensor ops on the same backend: forward values on Flex
//! and on `Autodiff<Flex>`, and every input gradient.

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Bool, Distribution, Int, Tensor, TensorData, backend::Backend};

use super::*;
use crate::attention::build_attention_mask;

type A = Autodiff<Flex>;

fn rand<B: Backend, const D: usize>(dims: [usize; D], seed: u64) -> Tensor<B, D> {
    B::seed(&Default::default(), seed);
    Tensor::random(dims, Distribution::Normal(0.0, 1.0), &Default::default())
}

fn close<const D: usize>(a: Tensor<Flex, D>, b: Tensor<Flex, D>, tol: f32, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes");
    let a = a.into_data().to_vec::<f32>().unwrap();
    let b = b.into_data().to_vec::<f32>().unwrap();
    let mut worst = 0.0f32;
    for (x, y) in a.iter().zip(&b) {
        assert!(x.is_finite(), "{what}: non-finite value");
        worst = worst.max((x - y).abs() / (1.0 + y.abs()));
    }
    assert!(
        worst <= tol,
        "{what}: worst relative difference {worst} > {tol}"
    );
}

/// Runs `f` on autodiff inputs fused and composed, comparing the output (reduced against a
/// fixed random projection) and the gradient of every input.
fn check_grads<const D: usize, const E: usize>(
    inputs: Vec<Tensor<Flex, D>>,
    f: impl Fn(Vec<Tensor<A, D>>) -> Tensor<A, E>,
    tol: f32,
    what: &str,
) {
    let run = |fused: bool| {
        let xs: Vec<Tensor<A, D>> = inputs
            .iter()
            .map(|x| Tensor::<A, D>::from_inner(x.clone()).require_grad())
            .collect();
        let body = || f(xs.clone());
        let y = if fused { body() } else { composed(body) };
        let w: Tensor<A, E> = rand::<A, E>(y.dims(), 99);
        let loss = (y.clone() * w).sum();
        let grads = loss.backward();
        let gs: Vec<Tensor<Flex, D>> = xs
            .iter()
            .map(|x| x.grad(&grads).expect("a gradient"))
            .collect();
        (y.inner(), gs)
    };
    let (y1, g1) = run(true);
    let (y2, g2) = run(false);
    close(y1, y2, tol, &format!("{what}: output"));
    for (i, (a, b)) in g1.into_iter().zip(g2).enumerate() {
        close(a, b, tol, &format!("{what}: gradient of input {i}"));
    }
}

#[test]
fn matmul_matches_burn_including_transposed_views() {
    for (m, k, n) in [(1, 64, 96), (3, 576, 40), (16, 64, 64), (40, 33, 70)] {
        let a: Tensor<Flex, 2> = rand([m, k], 1);
        let b: Tensor<Flex, 2> = rand([k, n], 2);
        close(
            matmul(a.clone(), b.clone()),
            a.clone().matmul(b.clone()),
            1e-5,
            "matmul",
        );
        let bt: Tensor<Flex, 2> = rand([n, k], 3);
        close(
            matmul(a.clone(), bt.clone().transpose()),
            a.clone().matmul(bt.transpose()),
            1e-5,
            "matmul bᵀ",
        );
        check_grads(
            vec![a.clone(), rand([k, n], 4)],
            |x| matmul(x[0].clone(), x[1].clone()),
            1e-5,
            "matmul",
        );
    }
}

#[test]
fn rms_norm_matches_composed() {
    let x: Tensor<Flex, 3> = rand([2, 5, 48], 1);
    let w: Tensor<Flex, 1> = rand([48], 2);
    close(
        rms_norm(x.clone(), w.clone(), 1e-5),
        composed(|| rms_norm(x.clone(), w.clone(), 1e-5)),
        1e-5,
        "rms_norm",
    );
    // Gradients of x and of the weight.
    let wx = w.clone().reshape([1, 1, 48]);
    check_grads(
        vec![x, wx],
        |v| rms_norm(v[0].clone(), v[1].clone().reshape([48]), 1e-5),
        1e-5,
        "rms_norm",
    );
}

#[test]
fn rope_matches_composed() {
    let (b, s, h, d) = (2, 7, 3, 16);
    let x: Tensor<Flex, 4> = rand([b, s, h, d], 1);
    let cos: Tensor<Flex, 2> = rand([b * s, d], 2);
    let sin: Tensor<Flex, 2> = rand([b * s, d], 3);
    close(
        rope(x.clone(), &cos, &sin),
        composed(|| rope(x.clone(), &cos, &sin)),
        1e-6,
        "rope",
    );
    let (ca, sa) = (
        Tensor::<A, 2>::from_inner(cos),
        Tensor::<A, 2>::from_inner(sin),
    );
    check_grads(vec![x], |v| rope(v[0].clone(), &ca, &sa), 1e-6, "rope");
}

fn masks(b: usize, s: usize, past: usize) -> Vec<Tensor<Flex, 4, Bool>> {
    let total = past + s;
    let padded: Vec<Vec<bool>> = (0..b)
        .map(|r| (0..total).map(|j| j >= r).collect())
        .collect();
    vec![
        build_attention_mask::<Flex>(b, s, past, None, &Default::default()),
        build_attention_mask::<Flex>(b, s, past, Some(&padded), &Default::default()),
    ]
}

#[test]
fn attention_matches_composed_with_causal_padding_and_cache_masks() {
    let (b, nh, nkv, hd) = (2, 6, 2, 8);
    for (s, past) in [(37, 0), (1, 9), (4, 5)] {
        let t = past + s;
        let q: Tensor<Flex, 4> = rand([b, s, nh, hd], 1);
        let k: Tensor<Flex, 4> = rand([b, t, nkv, hd], 2);
        let v: Tensor<Flex, 4> = rand([b, t, nkv, hd], 3);
        for mask in masks(b, s, past) {
            let fused = attention(q.clone(), k.clone(), v.clone(), &mask, Precision::F32);
            let reference =
                composed(|| attention(q.clone(), k.clone(), v.clone(), &mask, Precision::F32));
            // Rows whose every key is masked (left padding) are meaningless: the composed ops
            // give a uniform distribution, the kernel zeros. Compare the others.
            let data = mask.to_data().iter::<bool>().collect::<Vec<_>>();
            let keep: Vec<f32> = (0..b * s)
                .map(|r| {
                    if data[r * t..(r + 1) * t].iter().all(|&m| m) {
                        0.0
                    } else {
                        1.0
                    }
                })
                .collect();
            let keep =
                Tensor::<Flex, 3>::from_data(TensorData::new(keep, [b, s, 1]), &Default::default());
            close(fused * keep.clone(), reference * keep, 1e-5, "attention");
        }
        // A KV view with spare capacity, as the cache hands it over.
        let big: Tensor<Flex, 4> = rand([b, t + 5, nkv, hd], 4);
        let view = big.clone().narrow(1, 0, t);
        let mask = &masks(b, s, past)[0];
        close(
            attention(q.clone(), view.clone(), view.clone(), mask, Precision::F32),
            composed(|| attention(q.clone(), view.clone(), view.clone(), mask, Precision::F32)),
            1e-5,
            "attention on a cache view",
        );
    }
    let (s, t) = (19, 19);
    let mask = build_attention_mask::<A>(b, s, 0, None, &Default::default());
    check_grads(
        vec![
            rand([b, s, nh, hd], 5),
            rand([b, t, nkv, hd], 6),
            rand([b, t, nkv, hd], 7),
        ],
        |x| {
            attention(
                x[0].clone(),
                x[1].clone(),
                x[2].clone(),
                &mask,
                Precision::F32,
            )
        },
        1e-5,
        "attention",
    );
}

#[test]
fn swiglu_matches_composed() {
    let g: Tensor<Flex, 3> = rand([2, 3, 50], 1).mul_scalar(4.0);
    let u: Tensor<Flex, 3> = rand([2, 3, 50], 2);
    close(
        swiglu(g.clone(), u.clone()),
        composed(|| swiglu(g.clone(), u.clone())),
        1e-6,
        "swiglu",
    );
    check_grads(
        vec![g, u],
        |x| swiglu(x[0].clone(), x[1].clone()),
        1e-5,
        "swiglu",
    );
}

#[test]
fn cross_entropy_matches_composed() {
    let (n, vocab) = (9, 300);
    let logits: Tensor<Flex, 2> = rand([n, vocab], 1).mul_scalar(3.0);
    let ids: Vec<i64> = (0..n as i64).map(|i| (i * 37) % vocab as i64).collect();
    let targets =
        || Tensor::<A, 1, Int>::from_data(TensorData::new(ids.clone(), [n]), &Default::default());
    let tf =
        Tensor::<Flex, 1, Int>::from_data(TensorData::new(ids.clone(), [n]), &Default::default());
    close(
        cross_entropy_sum(logits.clone(), tf.clone()),
        composed(|| cross_entropy_sum(logits.clone(), tf.clone())),
        1e-5,
        "cross-entropy",
    );
    check_grads(
        vec![logits],
        |x| cross_entropy_sum(x[0].clone(), targets()),
        1e-5,
        "cross-entropy",
    );
}

#[test]
fn adamw_and_sum_squares_match_composed() {
    let p: Tensor<Flex, 2> = rand([300, 257], 1);
    let g: Tensor<Flex, 2> = rand([300, 257], 2);
    let m: Tensor<Flex, 2> = rand([300, 257], 3).mul_scalar(0.1);
    let v: Tensor<Flex, 2> = rand([300, 257], 4).abs().mul_scalar(0.01);
    let s = AdamWStep {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
        bias1: 1.0 - 0.9f32.powi(3),
        bias2: 1.0 - 0.999f32.powi(3),
        grad_scale: 0.7,
    };
    let fused = adamw_update(p.clone(), g.clone(), m.clone(), v.clone(), s);
    let reference = composed(|| adamw_update(p.clone(), g.clone(), m.clone(), v.clone(), s));
    close(fused.0, reference.0, 1e-6, "adamw parameter");
    close(fused.1, reference.1, 1e-6, "adamw first moment");
    close(fused.2, reference.2, 1e-6, "adamw second moment");
    let a = sum_squares(g.clone());
    let b = composed(|| sum_squares(g.clone()));
    assert!((a - b).abs() <= 1e-5 * b, "{a} vs {b}");
}

/// burn-ndarray's reciprocal is exact division: with its `simd` feature (which the workspace
/// leaves off, Cargo.toml) whole SIMD vectors got the hardware estimate (`rcp14`/`rcp_ps`,
/// 12-14 bits) and only the elements left over exact division, which made RMSNorm and the
/// backward passes of division and `log` inexact, by an amount that depended on where the buffer
/// lay in memory.
#[cfg(feature = "ndarray")]
#[test]
fn ndarray_reciprocal_is_exact_division() {
    use burn::backend::NdArray;
    let device = Default::default();
    for x in [3.0f32, 7.0, 0.1, 1234.5] {
        // Long enough for the SIMD path; unique, so the op may work in place.
        let t = Tensor::<NdArray<f32>, 1>::full([4099], x, &device);
        let got = t.recip().into_data().to_vec::<f32>().unwrap();
        let want = 1.0 / x;
        let wrong = got.iter().filter(|v| **v != want).count();
        assert_eq!(
            wrong,
            0,
            "1/{x}: {wrong} of {} values not 1/x = {want}",
            got.len()
        );
    }
}
