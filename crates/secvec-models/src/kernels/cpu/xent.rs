//! Cross-entropy of logits rows against target ids, summed: `Σ_r logsumexp(x_r) − x_r[t_r]`,
//! with its gradient `softmax(x_r) − onehot(t_r)` written in place over the logits.
//!
//! Composed, this was a six-op log-softmax, a gather and a gather-backward scatter into a
//! second `[rows, vocab]` buffer, with scalar `expf`.

use multiversion::multiversion;

use super::{math, par};

/// The summed negative log-likelihood and each row's log-sum-exp (kept for the backward pass).
/// `targets[r]` must be `< vocab`.
pub fn cross_entropy_sum(logits: &[f32], vocab: usize, targets: &[usize]) -> (f64, Vec<f32>) {
    let rows = targets.len();
    debug_assert_eq!(logits.len(), rows * vocab);
    let mut lse = vec![0.0; rows];
    par::for_row_chunks(&mut lse, 1, vocab, |r0, lse| {
        lse_rows(&logits[r0 * vocab..(r0 + lse.len()) * vocab], vocab, lse)
    });
    let nll = (0..rows)
        .map(|r| (lse[r] - logits[r * vocab + targets[r]]) as f64)
        .sum();
    (nll, lse)
}

#[multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512bw+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
fn lse_rows(x: &[f32], vocab: usize, lse: &mut [f32]) {
    for (row, out) in x.chunks_exact(vocab).zip(lse.iter_mut()) {
        let m = max(row);
        let mut acc = [0.0f32; 16];
        let mut t = 0;
        while t + 16 <= vocab {
            for l in 0..16 {
                acc[l] += math::exp(row[t + l] - m);
            }
            t += 16;
        }
        let mut s = acc.iter().sum::<f32>();
        for v in &row[t..] {
            s += math::exp(v - m);
        }
        *out = m + s.ln();
    }
}

#[inline(always)]
fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let mut t = 0;
    while t + 16 <= x.len() {
        for l in 0..16 {
            acc[l] = acc[l].max(x[t + l]);
        }
        t += 16;
    }
    let mut m = acc.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for &v in &x[t..] {
        m = m.max(v);
    }
    m
}

/// Overwrites `logits` with `scale · (softmax(x_r) − onehot(t_r))`, the gradient of
/// `scale · cross_entropy_sum`.
pub fn cross_entropy_backward_in_place(
    logits: &mut [f32],
    vocab: usize,
    targets: &[usize],
    lse: &[f32],
    scale: f32,
) {
    par::for_row_chunks(logits, vocab, vocab, |r0, rows| {
        let n = rows.len() / vocab;
        grad_rows(rows, vocab, &lse[r0..r0 + n], scale);
        for (r, row) in rows.chunks_exact_mut(vocab).enumerate() {
            row[targets[r0 + r]] -= scale;
        }
    });
}

#[multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512bw+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
fn grad_rows(x: &mut [f32], vocab: usize, lse: &[f32], scale: f32) {
    for (row, &l) in x.chunks_exact_mut(vocab).zip(lse) {
        for v in row.iter_mut() {
            *v = scale * math::exp(*v - l);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_direct_log_softmax_and_its_gradient() {
        let (rows, vocab) = (3, 40);
        let logits: Vec<f32> = (0..rows * vocab)
            .map(|i| ((i * 37) % 23) as f32 / 3.0 - 4.0)
            .collect();
        let targets = vec![0, 17, 39];
        let (nll, lse) = cross_entropy_sum(&logits, vocab, &targets);
        let mut want = 0.0f64;
        for r in 0..rows {
            let row = &logits[r * vocab..(r + 1) * vocab];
            let l = row.iter().map(|&v| (v as f64).exp()).sum::<f64>().ln();
            want += l - row[targets[r]] as f64;
        }
        assert!((nll - want).abs() < 1e-4, "{nll} vs {want}");
        let mut g = logits.clone();
        cross_entropy_backward_in_place(&mut g, vocab, &targets, &lse, 0.5);
        for r in 0..rows {
            let row = &logits[r * vocab..(r + 1) * vocab];
            let z: f64 = row.iter().map(|&v| (v as f64).exp()).sum();
            for j in 0..vocab {
                let p = (row[j] as f64).exp() / z;
                let want = 0.5 * (p - if j == targets[r] { 1.0 } else { 0.0 });
                assert!((g[r * vocab + j] as f64 - want).abs() < 1e-6);
            }
        }
    }
}
