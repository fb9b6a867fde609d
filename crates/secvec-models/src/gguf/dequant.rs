//! Dequantisation of ggml tensor blocks to `f32`.
//!
//! The block layouts and formulas follow llama.cpp's `ggml-common.h` / `ggml-quants.c`
//! (`dequantize_row_*`) exactly, including the order of the floating-point operations (without
//! fused multiply-adds).

use half::{bf16, f16};

use super::GgmlType;

/// Why [`dequantize`] refused its input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DequantError {
    /// The type has no dequantiser here.
    #[error("cannot dequantise ggml type {0}")]
    Unsupported(GgmlType),
    /// The byte length is not a whole number of blocks.
    #[error("{len} bytes is not a whole number of {ty} blocks ({} bytes each)", ty.type_size())]
    BadLength {
        /// The type.
        ty: GgmlType,
        /// The byte length given.
        len: usize,
    },
}

/// Dequantises `data` (a whole number of `ty` blocks) to `f32`, in storage order.
///
/// The result has `data.len() / ty.type_size() * ty.block_size()` values.
///
/// # Errors
///
/// [`DequantError::Unsupported`] if `!ty.can_dequantize()`, [`DequantError::BadLength`] if
/// `data.len()` is not a multiple of `ty.type_size()`.
pub fn dequantize(ty: GgmlType, data: &[u8]) -> Result<Vec<f32>, DequantError> {
    use GgmlType::*;
    if !ty.can_dequantize() {
        return Err(DequantError::Unsupported(ty));
    }
    if !data.len().is_multiple_of(ty.type_size()) {
        return Err(DequantError::BadLength {
            ty,
            len: data.len(),
        });
    }
    let n = data.len() / ty.type_size() * ty.block_size();
    let mut out = Vec::with_capacity(n);
    match ty {
        F32 => out.extend(
            data.as_chunks::<4>()
                .0
                .iter()
                .map(|b| f32::from_le_bytes(*b)),
        ),
        F16 => out.extend(
            data.as_chunks::<2>()
                .0
                .iter()
                .map(|b| f16::from_le_bytes(*b).to_f32()),
        ),
        BF16 => out.extend(
            data.as_chunks::<2>()
                .0
                .iter()
                .map(|b| bf16::from_le_bytes(*b).to_f32()),
        ),
        F64 => out.extend(
            data.as_chunks::<8>()
                .0
                .iter()
                .map(|b| f64::from_le_bytes(*b) as f32),
        ),
        I8 => out.extend(data.iter().map(|&b| f32::from(b as i8))),
        I16 => out.extend(
            data.as_chunks::<2>()
                .0
                .iter()
                .map(|b| f32::from(i16::from_le_bytes(*b))),
        ),
        I32 => out.extend(
            data.as_chunks::<4>()
                .0
                .iter()
                .map(|b| i32::from_le_bytes(*b) as f32),
        ),
        I64 => out.extend(
            data.as_chunks::<8>()
                .0
                .iter()
                .map(|b| i64::from_le_bytes(*b) as f32),
        ),
        Q4_0 => data
            .as_chunks::<18>()
            .0
            .iter()
            .for_each(|b| q4_0(b, &mut out)),
        Q4_1 => data
            .as_chunks::<20>()
            .0
            .iter()
            .for_each(|b| q4_1(b, &mut out)),
        Q5_0 => data
            .as_chunks::<22>()
            .0
            .iter()
            .for_each(|b| q5_0(b, &mut out)),
        Q5_1 => data
            .as_chunks::<24>()
            .0
            .iter()
            .for_each(|b| q5_1(b, &mut out)),
        Q8_0 => data
            .as_chunks::<34>()
            .0
            .iter()
            .for_each(|b| q8_0(b, &mut out)),
        Q2K => data
            .as_chunks::<84>()
            .0
            .iter()
            .for_each(|b| q2_k(b, &mut out)),
        Q3K => data
            .as_chunks::<110>()
            .0
            .iter()
            .for_each(|b| q3_k(b, &mut out)),
        Q4K => data
            .as_chunks::<144>()
            .0
            .iter()
            .for_each(|b| q4_k(b, &mut out)),
        Q5K => data
            .as_chunks::<176>()
            .0
            .iter()
            .for_each(|b| q5_k(b, &mut out)),
        Q6K => data
            .as_chunks::<210>()
            .0
            .iter()
            .for_each(|b| q6_k(b, &mut out)),
        Q8K => data
            .as_chunks::<292>()
            .0
            .iter()
            .for_each(|b| q8_k(b, &mut out)),
        _ => return Err(DequantError::Unsupported(ty)),
    }
    debug_assert_eq!(out.len(), n);
    Ok(out)
}

/// Reads the little-endian f16 at `b[at..at + 2]` as f32.
#[inline]
fn f16_at(b: &[u8], at: usize) -> f32 {
    match b.get(at..at + 2) {
        Some(&[lo, hi]) => f16::from_le_bytes([lo, hi]).to_f32(),
        _ => 0.0, // unreachable: callers pass constant offsets inside fixed-size blocks
    }
}

fn q4_0(b: &[u8; 18], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    let qs = &b[2..];
    out.extend(qs.iter().map(|&q| f32::from(i16::from(q & 0x0F) - 8) * d));
    out.extend(qs.iter().map(|&q| f32::from(i16::from(q >> 4) - 8) * d));
}

fn q4_1(b: &[u8; 20], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qs = &b[4..];
    out.extend(qs.iter().map(|&q| f32::from(q & 0x0F) * d + m));
    out.extend(qs.iter().map(|&q| f32::from(q >> 4) * d + m));
}

/// The 5-bit quants of a Q5_0/Q5_1 block, in element order (0..32).
fn q5_values(qh: u32, qs: &[u8]) -> impl Iterator<Item = u8> + '_ {
    let lo = qs
        .iter()
        .enumerate()
        .map(move |(j, &q)| (q & 0x0F) | ((((qh >> j) << 4) & 0x10) as u8));
    let hi = qs
        .iter()
        .enumerate()
        .map(move |(j, &q)| (q >> 4) | (((qh >> (j + 12)) & 0x10) as u8));
    lo.chain(hi)
}

fn q5_0(b: &[u8; 22], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    out.extend(q5_values(qh, &b[6..]).map(|q| f32::from(i16::from(q) - 16) * d));
}

fn q5_1(b: &[u8; 24], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    out.extend(q5_values(qh, &b[8..]).map(|q| f32::from(q) * d + m));
}

fn q8_0(b: &[u8; 34], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    out.extend(b[2..].iter().map(|&q| f32::from(q as i8) * d));
}

fn q2_k(b: &[u8; 84], out: &mut Vec<f32>) {
    // Layout: scales[16], qs[64], d, dmin.
    let (scales, rest) = b.split_at(16);
    let (qs, _) = rest.split_at(64);
    let d = f16_at(b, 80);
    let min = f16_at(b, 82);
    let mut is = 0;
    for q in qs.chunks_exact(32) {
        for shift in [0, 2, 4, 6] {
            for half in q.chunks_exact(16) {
                let sc = scales.get(is).copied().unwrap_or(0);
                is += 1;
                let dl = d * f32::from(sc & 0xF);
                let ml = min * f32::from(sc >> 4);
                out.extend(half.iter().map(|&v| dl * f32::from((v >> shift) & 3) - ml));
            }
        }
    }
}

fn q3_k(b: &[u8; 110], out: &mut Vec<f32>) {
    // Layout: hmask[32], qs[64], scales[12], d.
    let (hm, rest) = b.split_at(32);
    let (qs, rest) = rest.split_at(64);
    let d_all = f16_at(b, 108);
    let word = |i: usize| {
        u32::from_le_bytes([
            rest[4 * i],
            rest[4 * i + 1],
            rest[4 * i + 2],
            rest[4 * i + 3],
        ])
    };
    const KMASK1: u32 = 0x0303_0303;
    const KMASK2: u32 = 0x0f0f_0f0f;
    let (a0, a1, tmp) = (word(0), word(1), word(2));
    let aux = [
        (a0 & KMASK2) | ((tmp & KMASK1) << 4),
        (a1 & KMASK2) | (((tmp >> 2) & KMASK1) << 4),
        ((a0 >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4),
        ((a1 >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4),
    ];
    let mut scales = [0i8; 16];
    for (dst, src) in scales.chunks_exact_mut(4).zip(aux) {
        for (s, byte) in dst.iter_mut().zip(src.to_le_bytes()) {
            *s = byte as i8;
        }
    }
    let mut is = 0;
    let mut m: u8 = 1;
    for q in qs.chunks_exact(32) {
        for shift in [0, 2, 4, 6] {
            for (q16, hm16) in q.chunks_exact(16).zip(hm.chunks_exact(16)) {
                let sc = scales.get(is).copied().unwrap_or(0);
                is += 1;
                let dl = d_all * f32::from(i16::from(sc) - 32);
                out.extend(q16.iter().zip(hm16).map(|(&v, &h)| {
                    let low = i16::from((v >> shift) & 3);
                    dl * f32::from(low - if h & m != 0 { 0 } else { 4 })
                }));
            }
            m = m.wrapping_shl(1);
        }
    }
}

/// llama.cpp's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` (0..8).
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    let at = |i: usize| q.get(i).copied().unwrap_or(0);
    if j < 4 {
        (at(j) & 63, at(j + 4) & 63)
    } else {
        (
            (at(j + 4) & 0xF) | ((at(j - 4) >> 6) << 4),
            (at(j + 4) >> 4) | ((at(j) >> 6) << 4),
        )
    }
}

fn q4_k(b: &[u8; 144], out: &mut Vec<f32>) {
    // Layout: d, dmin, scales[12], qs[128].
    let d = f16_at(b, 0);
    let min = f16_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..];
    for (k, q) in qs.chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * k, scales);
        let (sc2, m2) = scale_min_k4(2 * k + 1, scales);
        let (d1, m1) = (d * f32::from(sc1), min * f32::from(m1));
        let (d2, m2) = (d * f32::from(sc2), min * f32::from(m2));
        out.extend(q.iter().map(|&v| d1 * f32::from(v & 0xF) - m1));
        out.extend(q.iter().map(|&v| d2 * f32::from(v >> 4) - m2));
    }
}

fn q5_k(b: &[u8; 176], out: &mut Vec<f32>) {
    // Layout: d, dmin, scales[12], qh[32], qs[128].
    let d = f16_at(b, 0);
    let min = f16_at(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let ql = &b[48..];
    let (mut u1, mut u2) = (1u8, 2u8);
    for (k, q) in ql.chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * k, scales);
        let (sc2, m2) = scale_min_k4(2 * k + 1, scales);
        let (d1, m1) = (d * f32::from(sc1), min * f32::from(m1));
        let (d2, m2) = (d * f32::from(sc2), min * f32::from(m2));
        out.extend(
            q.iter()
                .zip(qh)
                .map(|(&v, &h)| d1 * f32::from((v & 0xF) + if h & u1 != 0 { 16 } else { 0 }) - m1),
        );
        out.extend(
            q.iter()
                .zip(qh)
                .map(|(&v, &h)| d2 * f32::from((v >> 4) + if h & u2 != 0 { 16 } else { 0 }) - m2),
        );
        u1 = u1.wrapping_shl(2);
        u2 = u2.wrapping_shl(2);
    }
}

fn q6_k(b: &[u8; 210], out: &mut Vec<f32>) {
    // Layout: ql[128], qh[64], scales[16] (i8), d.
    let d = f16_at(b, 208);
    let (ql, rest) = b.split_at(128);
    let (qh, rest) = rest.split_at(64);
    let sc = &rest[..16];
    for ((ql, qh), sc) in ql
        .chunks_exact(64)
        .zip(qh.chunks_exact(32))
        .zip(sc.chunks_exact(8))
    {
        let mut y = [0f32; 128];
        for l in 0..32 {
            let is = l / 16;
            let (a, c, h) = (ql[l], ql[l + 32], qh[l]);
            let q1 = i16::from((a & 0xF) | ((h & 3) << 4)) - 32;
            let q2 = i16::from((c & 0xF) | (((h >> 2) & 3) << 4)) - 32;
            let q3 = i16::from((a >> 4) | (((h >> 4) & 3) << 4)) - 32;
            let q4 = i16::from((c >> 4) | (((h >> 6) & 3) << 4)) - 32;
            let s = |k: usize| f32::from(sc[is + k] as i8);
            y[l] = d * s(0) * f32::from(q1);
            y[l + 32] = d * s(2) * f32::from(q2);
            y[l + 64] = d * s(4) * f32::from(q3);
            y[l + 96] = d * s(6) * f32::from(q4);
        }
        out.extend_from_slice(&y);
    }
}

fn q8_k(b: &[u8; 292], out: &mut Vec<f32>) {
    // Layout: f32 d, qs[256] (i8), bsums[16] (i16).
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    out.extend(b[4..260].iter().map(|&q| d * f32::from(q as i8)));
}
