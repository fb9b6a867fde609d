//! Rotate-half rotary embeddings on token-major `[tokens, heads, head_dim]` data, forward and
//! backward, with the cos/sin rows of each token gathered once per forward pass (not once per
//! layer and per q/k, as the composed version did, through a broadcast that Flex ran on a scalar
//! strided fallback).

use multiversion::multiversion;

use super::par;

/// `y = x·cos + rotate_half(x)·sin` per head; `cos`/`sin` are `[tokens, head_dim]`.
pub fn rope(x: &[f32], heads: usize, head_dim: usize, cos: &[f32], sin: &[f32]) -> Vec<f32> {
    apply(x, heads, head_dim, cos, sin, false)
}

/// The gradient of [`rope`] with respect to its input: the transposed rotation.
pub fn rope_backward(
    dy: &[f32],
    heads: usize,
    head_dim: usize,
    cos: &[f32],
    sin: &[f32],
) -> Vec<f32> {
    apply(dy, heads, head_dim, cos, sin, true)
}

fn apply(x: &[f32], heads: usize, d: usize, cos: &[f32], sin: &[f32], transpose: bool) -> Vec<f32> {
    let row = heads * d;
    let mut y = vec![0.0; x.len()];
    par::for_row_chunks(&mut y, row, row, |t0, y| {
        let n = y.len() / row;
        rows(
            &x[t0 * row..(t0 + n) * row],
            heads,
            d,
            &cos[t0 * d..(t0 + n) * d],
            &sin[t0 * d..(t0 + n) * d],
            transpose,
            y,
        )
    });
    y
}

#[multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512bw+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
fn rows(
    x: &[f32],
    heads: usize,
    d: usize,
    cos: &[f32],
    sin: &[f32],
    transpose: bool,
    y: &mut [f32],
) {
    let half = d / 2;
    for (t, (xt, yt)) in x
        .chunks_exact(heads * d)
        .zip(y.chunks_exact_mut(heads * d))
        .enumerate()
    {
        let c = &cos[t * d..t * d + d];
        let s = &sin[t * d..t * d + d];
        for (xh, yh) in xt.chunks_exact(d).zip(yt.chunks_exact_mut(d)) {
            let (x1, x2) = xh.split_at(half);
            let (y1, y2) = yh.split_at_mut(half);
            if !transpose {
                // y1 = x1·c1 − x2·s1, y2 = x2·c2 + x1·s2.
                for i in 0..half {
                    y1[i] = x1[i] * c[i] - x2[i] * s[i];
                    y2[i] = x2[i] * c[half + i] + x1[i] * s[half + i];
                }
            } else {
                // dx1 = dy1·c1 + dy2·s2, dx2 = dy2·c2 − dy1·s1.
                for i in 0..half {
                    y1[i] = x1[i] * c[i] + x2[i] * s[half + i];
                    y2[i] = x2[i] * c[half + i] - x1[i] * s[i];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backward_is_the_adjoint_of_forward() {
        // <rope(x), y> == <x, rope_backward(y)> for any x, y (the rotation's transpose), even
        // with tables whose halves differ.
        let (tokens, heads, d) = (3, 2, 8);
        let x: Vec<f32> = (0..tokens * heads * d)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        let y: Vec<f32> = (0..tokens * heads * d)
            .map(|i| (i as f32 * 0.11).cos())
            .collect();
        let cos: Vec<f32> = (0..tokens * d).map(|i| (i as f32 * 0.5).cos()).collect();
        let sin: Vec<f32> = (0..tokens * d).map(|i| (i as f32 * 0.3).sin()).collect();
        let fx = rope(&x, heads, d, &cos, &sin);
        let by = rope_backward(&y, heads, d, &cos, &sin);
        let lhs: f64 = fx.iter().zip(&y).map(|(a, b)| (a * b) as f64).sum();
        let rhs: f64 = x.iter().zip(&by).map(|(a, b)| (a * b) as f64).sum();
        assert!((lhs - rhs).abs() < 1e-4, "{lhs} vs {rhs}");
    }
}
