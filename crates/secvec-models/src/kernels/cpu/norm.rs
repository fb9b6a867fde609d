//! RMSNorm in one pass per row, and its backward pass.
//!
//! Composed from tensor ops, RMSNorm is five passes forward (square, mean, add, sqrt-reciprocal,
//! two products) and about twice that backward, each single-threaded; here it is one pass each
//! way, split over the threads.

use multiversion::multiversion;

use super::par;

/// `y = x / sqrt(mean(x²) + eps) · w` for rows of `w.len()`; returns `y` and each row's
/// `1 / sqrt(mean(x²) + eps)` (kept for the backward pass).
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let d = w.len();
    let rows = x.len() / d;
    let mut y = vec![0.0; x.len()];
    let mut rstd = vec![0.0; rows];
    par::for_row_chunks2(&mut y, d, &mut rstd, 1, d, |r0, y, rstd| {
        forward_rows(&x[r0 * d..r0 * d + y.len()], w, eps, y, rstd)
    });
    (y, rstd)
}

#[multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512bw+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
fn forward_rows(x: &[f32], w: &[f32], eps: f32, y: &mut [f32], rstd: &mut [f32]) {
    let d = w.len();
    for ((xr, yr), r) in x
        .chunks_exact(d)
        .zip(y.chunks_exact_mut(d))
        .zip(rstd.iter_mut())
    {
        let ss = sum_sq(xr);
        let inv = 1.0 / (ss / d as f32 + eps).sqrt();
        *r = inv;
        for ((yv, xv), wv) in yr.iter_mut().zip(xr).zip(w) {
            *yv = xv * inv * wv;
        }
    }
}

/// Gradients of [`rms_norm`]: `(dx, dw)` from the output gradient `dy`, the input `x` and the
/// saved `rstd`; `dw` is `None` unless asked for.
pub fn rms_norm_backward(
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    rstd: &[f32],
    want_dw: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let d = w.len();
    let rows = x.len() / d;
    let mut dx = vec![0.0; x.len()];
    // dw is a sum over rows: each chunk of rows returns its partial sum.
    let chunks = par::pieces(rows, 3 * d, 1);
    let per = rows.div_ceil(chunks.max(1)).max(1);
    let partial: Vec<Vec<f32>> = {
        use rayon::prelude::*;
        dx.par_chunks_mut(per * d)
            .enumerate()
            .map(|(i, dxc)| {
                let r0 = i * per;
                let n = dxc.len() / d;
                let mut dw = if want_dw { vec![0.0; d] } else { Vec::new() };
                backward_rows(
                    &dy[r0 * d..(r0 + n) * d],
                    &x[r0 * d..(r0 + n) * d],
                    w,
                    &rstd[r0..r0 + n],
                    dxc,
                    &mut dw,
                );
                dw
            })
            .collect()
    };
    let dw = want_dw.then(|| {
        let mut total = vec![0.0; d];
        for p in &partial {
            for (t, v) in total.iter_mut().zip(p) {
                *t += v;
            }
        }
        total
    });
    (dx, dw)
}

#[multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512bw+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
fn backward_rows(dy: &[f32], x: &[f32], w: &[f32], rstd: &[f32], dx: &mut [f32], dw: &mut [f32]) {
    let d = w.len();
    let want_dw = !dw.is_empty();
    for (((dyr, xr), dxr), &inv) in dy
        .chunks_exact(d)
        .zip(x.chunks_exact(d))
        .zip(dx.chunks_exact_mut(d))
        .zip(rstd)
    {
        // g = dy·w; dx = inv · (g − x · inv² · mean(g·x)).
        let mut dot = [0.0f32; 16];
        let mut t = 0;
        while t + 16 <= d {
            for l in 0..16 {
                dot[l] += dyr[t + l] * w[t + l] * xr[t + l];
            }
            t += 16;
        }
        let mut tail = 0.0;
        for i in t..d {
            tail += dyr[i] * w[i] * xr[i];
        }
        let c = (dot.iter().sum::<f32>() + tail) * inv * inv / d as f32;
        for i in 0..d {
            dxr[i] = inv * (dyr[i] * w[i] - xr[i] * c);
        }
        if want_dw {
            for i in 0..d {
                dw[i] += dyr[i] * xr[i] * inv;
            }
        }
    }
}

/// `Σ x²` with 16 partial sums (vectorises).
#[inline(always)]
fn sum_sq(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let mut t = 0;
    while t + 16 <= x.len() {
        for l in 0..16 {
            acc[l] += x[t + l] * x[t + l];
        }
        t += 16;
    }
    let mut tail = 0.0;
    for v in &x[t..] {
        tail += v * v;
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backward_matches_finite_differences() {
        let d = 37;
        let rows = 3;
        let x: Vec<f32> = (0..rows * d)
            .map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let w: Vec<f32> = (0..d).map(|i| 0.5 + (i % 5) as f32 / 10.0).collect();
        let dy: Vec<f32> = (0..rows * d)
            .map(|i| ((i * 31) % 17) as f32 / 8.0 - 1.0)
            .collect();
        let eps = 1e-5;
        let loss = |x: &[f32], w: &[f32]| -> f64 {
            let (y, _) = rms_norm(x, w, eps);
            y.iter()
                .zip(&dy)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum()
        };
        let (_, rstd) = rms_norm(&x, &w, eps);
        let (dx, dw) = rms_norm_backward(&dy, &x, &w, &rstd, true);
        let dw = dw.unwrap();
        let h = 1e-2f32;
        for i in [0, 5, d, 2 * d + 36] {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[i] += h;
            xm[i] -= h;
            let num = (loss(&xp, &w) - loss(&xm, &w)) / (2.0 * h as f64);
            assert!(
                (num - dx[i] as f64).abs() < 2e-3,
                "dx[{i}]: {num} vs {}",
                dx[i]
            );
        }
        for i in [0, 17, d - 1] {
            let (mut wp, mut wm) = (w.clone(), w.clone());
            wp[i] += h;
            wm[i] -= h;
            let num = (loss(&x, &wp) - loss(&x, &wm)) / (2.0 * h as f64);
            assert!(
                (num - dw[i] as f64).abs() < 2e-3,
                "dw[{i}]: {num} vs {}",
                dw[i]
            );
        }
    }
}
