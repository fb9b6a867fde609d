//! Grouped-query attention with a boolean mask, forward and backward, on token-major data.
//!
//! Queries are `[batch, seq, heads, head_dim]`, keys and values `[batch, keys, kv_heads,
//! head_dim]` with any batch and position strides (a KV cache with spare capacity is a view of
//! this shape), the mask `[batch, seq, keys]` (non-zero = blocked). Each (batch, head) pair is an
//! independent task; within it, queries go in blocks of [`ROWS`] through two small GEMMs, and a
//! block only reaches as far right as its last unmasked key, so a causal mask costs half a full
//! one. Masked scores are never exponentiated (the composed version filled them with −1e30 and
//! sent them through scalar `expf`'s slow path), and a query with every key masked (left padding)
//! gets all-zero probabilities instead of NaNs.
//!
//! The backward pass recomputes nothing: the forward keeps the probabilities `[batch, heads,
//! seq, keys]`.

use multiversion::multiversion;
use rayon::prelude::*;

use super::gemm::{Mat, gemm_raw};
use super::math;

/// Queries per block of the score GEMMs.
const ROWS: usize = 32;

/// Keys or values: element `(b, j, h, d)` at `offset + b·sb + j·sj + h·sh + d`.
#[derive(Clone, Copy, Debug)]
pub struct KvView<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub sb: usize,
    pub sj: usize,
    pub sh: usize,
}

impl KvView<'_> {
    /// Keys `0..len` of head `h` in batch row `b`, as a `[len, head_dim]` matrix.
    fn head(&self, b: usize, h: usize, len: usize, head_dim: usize) -> Mat<'_> {
        Mat {
            data: self.data,
            offset: self.offset + b * self.sb + h * self.sh,
            rows: len,
            cols: head_dim,
            rs: self.sj,
            cs: 1,
        }
    }
}

/// Shapes of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub batch: usize,
    pub seq: usize,
    pub keys: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// One past the last unmasked key of every query row, `[batch · seq]`.
fn reach(mask: &[u8], dims: Dims) -> Vec<usize> {
    mask.chunks_exact(dims.keys)
        .map(|row| row.iter().rposition(|&m| m == 0).map_or(0, |j| j + 1))
        .collect()
}

/// A raw pointer that tasks writing disjoint parts of one buffer share.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: every use below writes a region no other task touches (its own (batch, head) rows).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The pointer (a method, so that closures capture the whole `Shared`, not its field).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// The attention output `[batch, seq, heads · head_dim]`, and the probabilities `[batch, heads,
/// seq, keys]` when `keep_probs` (for the backward pass).
pub fn attention(
    q: &[f32],
    k: KvView,
    v: KvView,
    mask: &[u8],
    dims: Dims,
    scale: f32,
    keep_probs: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let Dims {
        batch,
        seq,
        keys,
        heads,
        kv_heads,
        head_dim: hd,
    } = dims;
    assert_eq!(q.len(), batch * seq * heads * hd, "attention: query shape");
    assert_eq!(mask.len(), batch * seq * keys, "attention: mask shape");
    let group = heads / kv_heads;
    let reach = reach(mask, dims);
    let mut out = vec![0.0f32; batch * seq * heads * hd];
    let mut probs = keep_probs.then(|| vec![0.0f32; batch * heads * seq * keys]);
    let out_ptr = Shared(out.as_mut_ptr());
    let probs_ptr = probs.as_mut().map(|p| Shared(p.as_mut_ptr()));
    let qrow = heads * hd;

    let task = |bh: usize| {
        let (b, h) = (bh / heads, bh % heads);
        let kh = k.head(b, h / group, keys, hd);
        let vh = v.head(b, h / group, keys, hd);
        let mut scratch = if probs_ptr.is_none() {
            vec![0.0f32; ROWS * keys]
        } else {
            Vec::new()
        };
        for i0 in (0..seq).step_by(ROWS) {
            let rows = ROWS.min(seq - i0);
            let reach_b = &reach[b * seq + i0..b * seq + i0 + rows];
            let width = reach_b.iter().copied().max().unwrap_or(0);
            // Probabilities of this block: rows of stride `keys`.
            let p: *mut f32 = match probs_ptr {
                // SAFETY: rows i0.. of head (b, h) belong to this task only.
                Some(base) => unsafe { base.get().add(((b * heads + h) * seq + i0) * keys) },
                None => scratch.as_mut_ptr(),
            };
            if width == 0 {
                continue; // every key masked: zero probabilities, zero output
            }
            let qb = Mat {
                data: q,
                offset: (b * seq + i0) * qrow + h * hd,
                rows,
                cols: hd,
                rs: qrow,
                cs: 1,
            };
            // SAFETY: `p` has `rows` rows of `keys ≥ width` columns owned by this task.
            unsafe {
                gemm_raw(p, keys, qb, Mat { rows: width, ..kh }.t(), false, false);
                let block = std::slice::from_raw_parts_mut(p, rows * keys);
                softmax_rows(
                    block,
                    keys,
                    width,
                    &mask[(b * seq + i0) * keys..(b * seq + i0 + rows) * keys],
                    reach_b,
                    scale,
                );
                let pm = Mat {
                    data: std::slice::from_raw_parts(p, rows * keys),
                    offset: 0,
                    rows,
                    cols: width,
                    rs: keys,
                    cs: 1,
                };
                let dst = out_ptr.get().add((b * seq + i0) * qrow + h * hd);
                gemm_raw(dst, qrow, pm, Mat { rows: width, ..vh }, false, false);
            }
        }
    };
    if batch * heads > 1 && rayon::current_thread_index().is_none() {
        (0..batch * heads).into_par_iter().for_each(task);
    } else {
        (0..batch * heads).for_each(task);
    }
    (out, probs)
}

/// Scales, masks and normalises `rows` score rows in place (columns `0..width` computed, the
/// rest set to zero).
#[multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512bw+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
fn softmax_rows(
    block: &mut [f32],
    keys: usize,
    width: usize,
    mask: &[u8],
    reach: &[usize],
    scale: f32,
) {
    for ((row, m), &hi) in block
        .chunks_exact_mut(keys)
        .zip(mask.chunks_exact(keys))
        .zip(reach)
    {
        let (live, rest) = row.split_at_mut(hi);
        rest[..width - hi.min(width)].fill(0.0);
        if hi == 0 {
            continue;
        }
        let m = &m[..hi];
        let mut max = f32::NEG_INFINITY;
        for (s, &blocked) in live.iter_mut().zip(m) {
            *s *= scale;
            if blocked == 0 {
                max = max.max(*s);
            }
        }
        let mut sum = 0.0f32;
        for (s, &blocked) in live.iter_mut().zip(m) {
            let e = math::exp(*s - max);
            *s = if blocked == 0 { e } else { 0.0 };
            sum += *s;
        }
        let inv = 1.0 / sum;
        for s in live.iter_mut() {
            *s *= inv;
        }
    }
}

/// Gradients `(dq, dk, dv)` of [`attention`], in the layouts of `q` (`[batch, seq, heads,
/// head_dim]`) and of contiguous keys/values (`[batch, keys, kv_heads, head_dim]`).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    d_out: &[f32],
    q: &[f32],
    k: KvView,
    v: KvView,
    out: &[f32],
    probs: &[f32],
    mask: &[u8],
    dims: Dims,
    scale: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let Dims {
        batch,
        seq,
        keys,
        heads,
        kv_heads,
        head_dim: hd,
    } = dims;
    let group = heads / kv_heads;
    let reach = reach(mask, dims);
    let qrow = heads * hd;
    let kvrow = kv_heads * hd;
    let mut dq = vec![0.0f32; q.len()];
    let mut dk = vec![0.0f32; batch * keys * kvrow];
    let mut dv = vec![0.0f32; batch * keys * kvrow];
    let (dq_ptr, dk_ptr, dv_ptr) = (
        Shared(dq.as_mut_ptr()),
        Shared(dk.as_mut_ptr()),
        Shared(dv.as_mut_ptr()),
    );

    // One task per (batch, kv head): it owns that head's dk/dv and its group's dq.
    let task = |bg: usize| {
        let (b, g) = (bg / kv_heads, bg % kv_heads);
        let kh = k.head(b, g, keys, hd);
        let vh = v.head(b, g, keys, hd);
        let mut ds = vec![0.0f32; ROWS * keys];
        // SAFETY: (b, g)'s rows of dk/dv and its heads' rows of dq are this task's alone;
        // every matrix below is in bounds by construction of the shapes.
        unsafe {
            let dkh = dk_ptr.get().add(b * keys * kvrow + g * hd);
            let dvh = dv_ptr.get().add(b * keys * kvrow + g * hd);
            for h in g * group..(g + 1) * group {
                for i0 in (0..seq).step_by(ROWS) {
                    let rows = ROWS.min(seq - i0);
                    let reach_b = &reach[b * seq + i0..b * seq + i0 + rows];
                    let width = reach_b.iter().copied().max().unwrap_or(0);
                    if width == 0 {
                        continue;
                    }
                    let row0 = (b * seq + i0) * qrow + h * hd;
                    let at = |data| Mat {
                        data,
                        offset: row0,
                        rows,
                        cols: hd,
                        rs: qrow,
                        cs: 1,
                    };
                    let (dob, qb, ob) = (at(d_out), at(q), at(out));
                    let pb = Mat {
                        data: probs,
                        offset: ((b * heads + h) * seq + i0) * keys,
                        rows,
                        cols: width,
                        rs: keys,
                        cs: 1,
                    };
                    // dV += Pᵀ · dO.
                    gemm_raw(dvh, kvrow, pb.t(), dob, true, false);
                    // dP = dO · Vᵀ, then dS = P ∘ (dP − rowsum(dO ∘ O)) · scale.
                    gemm_raw(
                        ds.as_mut_ptr(),
                        keys,
                        dob,
                        Mat { rows: width, ..vh }.t(),
                        false,
                        false,
                    );
                    softmax_backward_rows(
                        &mut ds,
                        &probs[pb.offset..],
                        keys,
                        width,
                        rows,
                        dob,
                        ob,
                        scale,
                    );
                    let dsm = Mat {
                        data: &ds,
                        offset: 0,
                        rows,
                        cols: width,
                        rs: keys,
                        cs: 1,
                    };
                    // dQ = dS · K, dK += dSᵀ · Q.
                    gemm_raw(
                        dq_ptr.get().add(row0),
                        qrow,
                        dsm,
                        Mat { rows: width, ..kh },
                        false,
                        false,
                    );
                    gemm_raw(dkh, kvrow, dsm.t(), qb, true, false);
                }
            }
        }
    };
    if batch * kv_heads > 1 && rayon::current_thread_index().is_none() {
        (0..batch * kv_heads).into_par_iter().for_each(task);
    } else {
        (0..batch * kv_heads).for_each(task);
    }
    (dq, dk, dv)
}

#[allow(clippy::too_many_arguments)]
#[multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512bw+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
fn softmax_backward_rows(
    ds: &mut [f32],
    probs: &[f32],
    keys: usize,
    width: usize,
    rows: usize,
    d_out: Mat,
    out: Mat,
    scale: f32,
) {
    for r in 0..rows {
        let dor = &d_out.data[d_out.offset + r * d_out.rs..][..d_out.cols];
        let or = &out.data[out.offset + r * out.rs..][..out.cols];
        let dsum = super::gemm::dot(dor, or);
        let p = &probs[r * keys..r * keys + width];
        let d = &mut ds[r * keys..r * keys + width];
        for (dv, &pv) in d.iter_mut().zip(p) {
            *dv = pv * (*dv - dsum) * scale;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct f64 attention for one (batch, head): softmax over unmasked keys.
    fn reference(q: &[f32], k: &[f32], v: &[f32], mask: &[u8], dims: Dims, scale: f32) -> Vec<f64> {
        let Dims {
            batch,
            seq,
            keys,
            heads,
            kv_heads,
            head_dim: hd,
        } = dims;
        let group = heads / kv_heads;
        let mut out = vec![0.0; batch * seq * heads * hd];
        for b in 0..batch {
            for h in 0..heads {
                let g = h / group;
                for i in 0..seq {
                    let qi = &q[((b * seq + i) * heads + h) * hd..][..hd];
                    let mut s: Vec<Option<f64>> = (0..keys)
                        .map(|j| {
                            (mask[(b * seq + i) * keys + j] == 0).then(|| {
                                let kj = &k[((b * keys + j) * kv_heads + g) * hd..][..hd];
                                qi.iter().zip(kj).map(|(a, c)| (a * c) as f64).sum::<f64>()
                                    * scale as f64
                            })
                        })
                        .collect();
                    let m = s
                        .iter()
                        .flatten()
                        .cloned()
                        .fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = s.iter().flatten().map(|x| (x - m).exp()).sum();
                    for sj in s.iter_mut().flatten() {
                        *sj = (*sj - m).exp() / z;
                    }
                    for (j, p) in s.iter().enumerate() {
                        if let Some(p) = p {
                            let vj = &v[((b * keys + j) * kv_heads + g) * hd..][..hd];
                            for d in 0..hd {
                                out[((b * seq + i) * heads + h) * hd + d] += p * vj[d] as f64;
                            }
                        }
                    }
                }
            }
        }
        out
    }

    fn setup(seq: usize, keys: usize) -> (Dims, Vec<f32>, Vec<f32>, Vec<f32>, Vec<u8>) {
        let dims = Dims {
            batch: 2,
            seq,
            keys,
            heads: 4,
            kv_heads: 2,
            head_dim: 8,
        };
        let n = |len: usize, s: f32| -> Vec<f32> {
            (0..len).map(|i| ((i as f32 + s) * 0.731).sin()).collect()
        };
        let q = n(2 * seq * 4 * 8, 0.0);
        let k = n(2 * keys * 2 * 8, 1.0);
        let v = n(2 * keys * 2 * 8, 2.0);
        // Causal over absolute positions (past = keys − seq), row 1 left-padded by 2 keys.
        let past = keys - seq;
        let mut mask = vec![0u8; 2 * seq * keys];
        for b in 0..2 {
            for i in 0..seq {
                for j in 0..keys {
                    let blocked = j > past + i || (b == 1 && j < 2);
                    mask[(b * seq + i) * keys + j] = blocked as u8;
                }
            }
        }
        (dims, q, k, v, mask)
    }

    fn view(data: &[f32], dims: Dims) -> KvView<'_> {
        KvView {
            data,
            offset: 0,
            sb: dims.keys * dims.kv_heads * dims.head_dim,
            sj: dims.kv_heads * dims.head_dim,
            sh: dims.head_dim,
        }
    }

    #[test]
    fn forward_matches_reference_with_causal_and_padding_masks() {
        for (seq, keys) in [(40, 40), (1, 7), (3, 9)] {
            let (dims, q, k, v, mask) = setup(seq, keys);
            let (out, _) = attention(&q, view(&k, dims), view(&v, dims), &mask, dims, 0.3, true);
            let want = reference(&q, &k, &v, &mask, dims, 0.3);
            for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                assert!((*a as f64 - b).abs() < 1e-5, "seq {seq}: {i}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn fully_masked_rows_give_zeros_not_nans() {
        let (dims, q, k, v, mut mask) = setup(3, 3);
        mask[..3].fill(1);
        let (out, _) = attention(&q, view(&k, dims), view(&v, dims), &mask, dims, 0.3, false);
        assert!(out.iter().all(|x| x.is_finite()));
        assert!(out[..dims.heads * dims.head_dim].iter().all(|&x| x == 0.0));
    }

    #[test]
    fn backward_matches_finite_differences() {
        let (dims, q, k, v, mask) = setup(35, 35);
        let scale = 0.3;
        let d_out: Vec<f32> = (0..q.len())
            .map(|i| ((i * 13 % 7) as f32 - 3.0) / 3.0)
            .collect();
        let loss = |q: &[f32], k: &[f32], v: &[f32]| -> f64 {
            reference(q, k, v, &mask, dims, scale)
                .iter()
                .zip(&d_out)
                .map(|(a, b)| a * *b as f64)
                .sum()
        };
        let (out, probs) = attention(&q, view(&k, dims), view(&v, dims), &mask, dims, scale, true);
        let (dq, dk, dv) = attention_backward(
            &d_out,
            &q,
            view(&k, dims),
            view(&v, dims),
            &out,
            &probs.unwrap(),
            &mask,
            dims,
            scale,
        );
        let h = 1e-3f32;
        let check = |grad: &[f32], which: usize, idx: usize| {
            let mut p = [q.clone(), k.clone(), v.clone()];
            let mut m = [q.clone(), k.clone(), v.clone()];
            p[which][idx] += h;
            m[which][idx] -= h;
            let num = (loss(&p[0], &p[1], &p[2]) - loss(&m[0], &m[1], &m[2])) / (2.0 * h as f64);
            assert!(
                (num - grad[idx] as f64).abs() < 2e-3,
                "grad {which}[{idx}]: {num} vs {}",
                grad[idx]
            );
        };
        for idx in [0, 9, 100, q.len() - 1, 35 * 32 + 5] {
            check(&dq, 0, idx);
        }
        for idx in [0, 17, 300, k.len() - 1] {
            check(&dk, 1, idx);
            check(&dv, 2, idx);
        }
    }
}
