//! AdamW's update in one pass over parameter, gradient and both moments, in place, split over
//! the threads; and the sum of squares that the global gradient norm needs.
//!
//! burn-optim's AdamW makes about fourteen single-threaded tensor passes per parameter (moments,
//! bias corrections, square root, division, decay), which for full fine-tuning of a 135M model is
//! seconds per step.

use multiversion::multiversion;
use rayon::prelude::*;

use super::par;

/// Hyper-parameters of one AdamW step, with the bias corrections of step `t` folded in.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// `1 − β₁ᵗ` and `1 − β₂ᵗ`.
    pub bias1: f32,
    pub bias2: f32,
    /// Multiplies the gradient first (global-norm clipping, f16 loss unscaling).
    pub grad_scale: f32,
}

/// Elements a thread takes at a time.
const CHUNK: usize = 1 << 16;

/// `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`, `p ← p(1 − lr·wd) − lr·(m/b₁)/(√(v/b₂) + ε)`
/// with `g = grad_scale · grad`, as PyTorch's and burn's AdamW.
pub fn adamw_update(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: AdamWStep) {
    assert!(g.len() == p.len() && m.len() == p.len() && v.len() == p.len());
    if p.len() < par::MIN_PARALLEL_WORK {
        update(p, g, m, v, s);
        return;
    }
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), m), v)| update(p, g, m, v, s));
}

#[multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512bw+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
fn update(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: AdamWStep) {
    let decay = 1.0 - s.lr * s.weight_decay;
    let (c1, c2) = (1.0 - s.beta1, 1.0 - s.beta2);
    for i in 0..p.len() {
        let gi = g[i] * s.grad_scale;
        let mi = s.beta1 * m[i] + c1 * gi;
        let vi = s.beta2 * v[i] + c2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        let delta = (mi / s.bias1) / ((vi / s.bias2).sqrt() + s.eps);
        p[i] = p[i] * decay - s.lr * delta;
    }
}

/// `Σ x²` in f64 partial sums per chunk.
pub fn sum_squares(x: &[f32]) -> f64 {
    if x.len() < par::MIN_PARALLEL_WORK {
        return sum_sq_chunk(x);
    }
    x.par_chunks(CHUNK).map(sum_sq_chunk).sum()
}

#[multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512bw+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
fn sum_sq_chunk(x: &[f32]) -> f64 {
    // f32 lanes over blocks of 1024, summed in f64: f32 accumulation over a whole chunk
    // would lose about 1e-5 relative.
    let mut total = 0.0f64;
    for block in x.chunks(1024) {
        let mut acc = [0.0f32; 16];
        let mut t = 0;
        while t + 16 <= block.len() {
            for l in 0..16 {
                acc[l] += block[t + l] * block[t + l];
            }
            t += 16;
        }
        let tail: f32 = block[t..].iter().map(|v| v * v).sum();
        total += acc.iter().map(|&a| a as f64).sum::<f64>() + tail as f64;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_steps_match_the_textbook_update() {
        let n = 70_000; // above the parallel threshold
        let g: Vec<f32> = (0..n).map(|i| ((i % 13) as f32 - 6.0) / 10.0).collect();
        let mut p: Vec<f32> = (0..n).map(|i| ((i % 7) as f32 - 3.0) / 5.0).collect();
        let p0 = p.clone();
        let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
        let (b1, b2, lr, wd, eps) = (0.9f32, 0.999f32, 1e-2f32, 0.01f32, 1e-8f32);
        for t in 1..=2 {
            adamw_update(
                &mut p,
                &g,
                &mut m,
                &mut v,
                AdamWStep {
                    lr,
                    beta1: b1,
                    beta2: b2,
                    eps,
                    weight_decay: wd,
                    bias1: 1.0 - b1.powi(t),
                    bias2: 1.0 - b2.powi(t),
                    grad_scale: 0.5,
                },
            );
        }
        for i in [0, 1, 12, n - 1] {
            let gi = g[i] as f64 * 0.5;
            let (mut pi, mut mi, mut vi) = (p0[i] as f64, 0.0, 0.0);
            for t in 1..=2 {
                mi = 0.9 * mi + 0.1 * gi;
                vi = 0.999 * vi + 0.001 * gi * gi;
                let mh = mi / (1.0 - 0.9f64.powi(t));
                let vh = vi / (1.0 - 0.999f64.powi(t));
                pi = pi * (1.0 - 1e-2 * 0.01) - 1e-2 * mh / (vh.sqrt() + 1e-8);
            }
            assert!((p[i] as f64 - pi).abs() < 1e-6, "{i}: {} vs {pi}", p[i]);
        }
        let ss: f64 = g.iter().map(|&x| (x as f64) * (x as f64)).sum();
        assert!((sum_squares(&g) - ss).abs() < 1e-6 * ss);
    }
}
