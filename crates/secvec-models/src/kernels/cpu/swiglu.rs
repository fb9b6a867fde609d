//! The SwiGLU gate `silu(g) · u` in one pass, and its backward pass in one more (autodiff of
//! the composed form takes five passes and calls scalar `expf` twice per element).

use multiversion::multiversion;

use super::{math, par};

/// `silu(g) · u` elementwise.
pub fn swiglu(g: &[f32], u: &[f32]) -> Vec<f32> {
    let mut y = vec![0.0; g.len()];
    par::for_row_chunks(&mut y, 1, 1, |i0, y| {
        forward(&g[i0..i0 + y.len()], &u[i0..i0 + y.len()], y)
    });
    y
}

#[multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512bw+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
fn forward(g: &[f32], u: &[f32], y: &mut [f32]) {
    for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
        *y = g * math::sigmoid(g) * u;
    }
}

/// `(dg, du)` from the output gradient.
pub fn swiglu_backward(dy: &[f32], g: &[f32], u: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut dg = vec![0.0; g.len()];
    let mut du = vec![0.0; g.len()];
    par::for_row_chunks2(&mut dg, 1, &mut du, 1, 2, |i0, dg, du| {
        let n = dg.len();
        backward(&dy[i0..i0 + n], &g[i0..i0 + n], &u[i0..i0 + n], dg, du)
    });
    (dg, du)
}

#[multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512bw+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
fn backward(dy: &[f32], g: &[f32], u: &[f32], dg: &mut [f32], du: &mut [f32]) {
    for i in 0..dy.len() {
        let s = math::sigmoid(g[i]);
        let silu = g[i] * s;
        du[i] = dy[i] * silu;
        // d silu / dg = s · (1 + g · (1 − s)).
        dg[i] = dy[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backward_matches_finite_differences() {
        let g: Vec<f32> = (0..50).map(|i| i as f32 / 5.0 - 5.0).collect();
        let u: Vec<f32> = (0..50).map(|i| (i as f32 * 0.3).cos()).collect();
        let dy: Vec<f32> = (0..50).map(|i| (i as f32 * 0.7).sin()).collect();
        let (dg, du) = swiglu_backward(&dy, &g, &u);
        let f = |g: f64, u: f64| g / (1.0 + (-g).exp()) * u;
        let h = 1e-3;
        for i in 0..50 {
            let (gi, ui) = (g[i] as f64, u[i] as f64);
            let ng = (f(gi + h, ui) - f(gi - h, ui)) / (2.0 * h) * dy[i] as f64;
            let nu = (f(gi, ui + h) - f(gi, ui - h)) / (2.0 * h) * dy[i] as f64;
            assert!((ng - dg[i] as f64).abs() < 1e-4, "dg[{i}]");
            assert!((nu - du[i] as f64).abs() < 1e-4, "du[{i}]");
        }
        let y = swiglu(&g, &u);
        for i in 0..50 {
            assert!((y[i] as f64 - f(g[i] as f64, u[i] as f64)).abs() < 1e-5);
        }
    }
}
