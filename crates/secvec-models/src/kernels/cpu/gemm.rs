//! f32 matrix products on strided views: the `gemm` crate (AVX-512 kernels through burn's
//! `x86-v4` feature), split over both cores whenever the product is large enough to pay for it.
//!
//! Why not Flex's own matmul: it runs single-threaded below 192³ multiply-adds, which is every
//! projection of batched decoding (16 × 576 × 576), and gemm's matrix–vector path is
//! single-threaded and memory-bound on one core (batch-1 decoding spent 73% of its time there).

use rayon::prelude::*;

/// A read-only strided matrix view: element `(i, j)` is `data[offset + i·rs + j·cs]`.
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major `rows × cols` matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        debug_assert!(data.len() >= rows * cols);
        Self {
            data,
            offset: 0,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose (a view, no copy).
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Whether every element lies inside `data` (a view from a tensor layout is checked once
    /// before any unsafe indexing).
    pub fn in_bounds(&self) -> bool {
        if self.rows == 0 || self.cols == 0 {
            return true;
        }
        let last = self.offset + (self.rows - 1) * self.rs + (self.cols - 1) * self.cs;
        last < self.data.len()
    }

    fn ptr(&self) -> *const f32 {
        self.data[self.offset..].as_ptr()
    }
}

/// Multiply-adds below which a product runs on one thread.
const PARALLEL_FLOPS: usize = 1 << 18;
/// Rows up to which the threads split the product themselves (gemm's own parallel split wins
/// beyond, and loses below: it wakes the other thread several times per product).
const FEW_ROWS: usize = 16;
/// Rows up to which a row-major right-hand side is split by depth, not by columns.
const DEPTH_SPLIT_ROWS: usize = 2;

/// `out = a · b` (or `out += a · b` with `accumulate`), `out` row-major `a.rows × b.cols` with
/// row stride `ld`.
///
/// Parallel split: above [`FEW_ROWS`] rows gemm's own; below, one task per thread, each a
/// single-threaded gemm on a slice of the columns (or, for 1–2 rows against a row-major `b`,
/// a slice of the depth, so that each thread streams a contiguous half of `b`: decoding one
/// sequence is bound by reading the weights).
pub fn matmul_into(out: &mut [f32], ld: usize, a: Mat, b: Mat, accumulate: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(k, b.rows, "matmul: inner dimensions differ");
    assert!(a.in_bounds() && b.in_bounds(), "matmul: view out of bounds");
    assert!(
        m == 0 || out.len() >= (m - 1) * ld + n,
        "matmul: output too small"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                out[i * ld..i * ld + n].fill(0.0);
            }
        }
        return;
    }
    let threads = if m * n * k >= PARALLEL_FLOPS && rayon::current_thread_index().is_none() {
        rayon::current_num_threads()
    } else {
        1
    };
    if threads == 1 {
        // SAFETY: views checked in bounds above; `out` holds `m` rows of stride `ld`.
        unsafe { gemm_raw(out.as_mut_ptr(), ld, a, b, accumulate, false) };
    } else if m > FEW_ROWS {
        unsafe { gemm_raw(out.as_mut_ptr(), ld, a, b, accumulate, true) };
    } else if m <= DEPTH_SPLIT_ROWS && b.cs == 1 && k >= 2 * threads {
        split_depth(out, ld, a, b, accumulate, threads);
    } else {
        split_columns(out, ld, a, b, accumulate, threads);
    }
}

/// A raw output pointer shared by tasks writing disjoint columns.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: each task below writes only its own columns (or its own buffer).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// One gemm per thread on consecutive column ranges (multiples of 16 columns).
fn split_columns(out: &mut [f32], ld: usize, a: Mat, b: Mat, accumulate: bool, parts: usize) {
    let n = b.cols;
    let per = n.div_ceil(parts).div_ceil(16) * 16;
    let dst = Out(out.as_mut_ptr());
    (0..n.div_ceil(per)).into_par_iter().for_each(|p| {
        let (j0, j1) = (p * per, ((p + 1) * per).min(n));
        let bp = Mat {
            offset: b.offset + j0 * b.cs,
            cols: j1 - j0,
            ..b
        };
        // SAFETY: columns j0..j1 of the `m` rows are this task's alone.
        unsafe { gemm_raw(dst.get().add(j0), ld, a, bp, accumulate, false) };
    });
}

/// One gemm per thread on consecutive ranges of the depth, the partial products summed.
fn split_depth(out: &mut [f32], ld: usize, a: Mat, b: Mat, accumulate: bool, parts: usize) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let per = k.div_ceil(parts);
    let dst = Out(out.as_mut_ptr());
    let partials: Vec<Vec<f32>> = (0..k.div_ceil(per))
        .into_par_iter()
        .map(|p| {
            let (t0, t1) = (p * per, ((p + 1) * per).min(k));
            let ap = Mat {
                offset: a.offset + t0 * a.cs,
                cols: t1 - t0,
                ..a
            };
            let bp = Mat {
                offset: b.offset + t0 * b.rs,
                rows: t1 - t0,
                ..b
            };
            if p == 0 {
                // SAFETY: only the first task writes `out`.
                unsafe { gemm_raw(dst.get(), ld, ap, bp, accumulate, false) };
                Vec::new()
            } else {
                let mut part = vec![0.0; m * n];
                // SAFETY: a private buffer of m rows × n.
                unsafe { gemm_raw(part.as_mut_ptr(), n, ap, bp, false, false) };
                part
            }
        })
        .collect();
    for part in partials.iter().filter(|p| !p.is_empty()) {
        for i in 0..m {
            for (o, v) in out[i * ld..i * ld + n]
                .iter_mut()
                .zip(&part[i * n..(i + 1) * n])
            {
                *o += v;
            }
        }
    }
}

/// gemm on raw output memory.
///
/// # Safety
/// `dst` must be valid for `a.rows` rows of stride `ld` and `b.cols` columns, and not written
/// by anyone else during the call; `a` and `b` must be in bounds.
pub unsafe fn gemm_raw(dst: *mut f32, ld: usize, a: Mat, b: Mat, accumulate: bool, parallel: bool) {
    debug_assert!(a.in_bounds() && b.in_bounds());
    if a.rows == 0 || b.cols == 0 {
        return;
    }
    unsafe {
        gemm::gemm(
            a.rows,
            b.cols,
            a.cols,
            dst,
            1,
            ld as isize,
            accumulate,
            a.ptr(),
            a.cs as isize,
            a.rs as isize,
            b.ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            if parallel {
                gemm::Parallelism::Rayon(0)
            } else {
                gemm::Parallelism::None
            },
        );
    }
}

/// `a · b` as a new row-major matrix.
pub fn matmul(a: Mat, b: Mat) -> Vec<f32> {
    let mut out = vec![0.0; a.rows * b.cols];
    matmul_into(&mut out, b.cols, a, b, false);
    out
}

/// A dot product with 16 independent partial sums, so that it vectorises.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 16;
    let n = a.len().min(b.len());
    let mut acc = [0.0f32; L];
    let chunks = n / L;
    for c in 0..chunks {
        let x: &[f32; L] = a[c * L..c * L + L].try_into().expect("chunk");
        let y: &[f32; L] = b[c * L..c * L + L].try_into().expect("chunk");
        for l in 0..L {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = 0.0;
    for t in chunks * L..n {
        s += a[t] * b[t];
    }
    acc.iter().sum::<f32>() + s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: Mat, b: Mat) -> Vec<f32> {
        let mut out = vec![0.0; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                let mut s = 0.0f64;
                for t in 0..a.cols {
                    s += a.data[a.offset + i * a.rs + t * a.cs] as f64
                        * b.data[b.offset + t * b.rs + j * b.cs] as f64;
                }
                out[i * b.cols + j] = s as f32;
            }
        }
        out
    }

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 1000) as f32
                    / 500.0
                    - 1.0
            })
            .collect()
    }

    #[test]
    fn every_path_matches_a_naive_product() {
        // (m, k, n): few rows (split by depth or by columns over the threads, or on one
        // thread), odd widths and depths, and gemm's own split beyond 64 rows.
        let shapes = [
            (1, 7, 5),
            (3, 64, 130),
            (4, 576, 200),
            (5, 33, 17),
            (16, 577, 1000),
            (17, 37, 33),
            (64, 96, 160),
            (65, 64, 70),
            (130, 256, 300),
        ];
        for &(m, k, n) in &shapes {
            let a_data = data(m * k + 3, 1);
            let b_data = data(k * n + 5, 2);
            let a = Mat {
                offset: 3,
                ..Mat::row_major(&a_data[..], m, k)
            };
            for b in [
                Mat {
                    offset: 5,
                    ..Mat::row_major(&b_data[..], k, n)
                },
                // The transpose of a row-major n×k matrix (a tied LM head).
                Mat {
                    offset: 5,
                    ..Mat::row_major(&b_data[..], n, k)
                }
                .t(),
            ] {
                let want = naive(a, b);
                let got = matmul(a, b);
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                        "{m}x{k}x{n}: {g} vs {w}"
                    );
                }
                let mut acc = vec![1.0; m * n];
                matmul_into(&mut acc, n, a, b, true);
                for (g, w) in acc.iter().zip(&want) {
                    assert!((g - (w + 1.0)).abs() <= 1e-4 * (2.0 + w.abs()));
                }
            }
        }
    }
}
