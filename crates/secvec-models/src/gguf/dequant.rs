//! ggml tensor types and their dequantisation to `f32`.
//!
//! The block layouts and formulas follow llama.cpp's `ggml-common.h` / `ggml-quants.c`
//! (`dequantize_row_*`) exactly, including the order of the floating-point operations (without
//! fused multiply-adds).

use half::{bf16, f16};

/// A ggml tensor element type, as stored (as a `u32` id) in GGUF tensor descriptions.
///
/// All types whose block size is known are listed, so that files using them can be opened and
/// bounds-checked; only those for which [`GgmlType::can_dequantize`] is true can be converted
/// to `f32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// IEEE half float.
    F16,
    /// 32 values: f16 scale + 16 bytes of 4-bit quants, `x = (q - 8) * d`.
    Q4_0,
    /// 32 values: f16 scale and min + 16 bytes of 4-bit quants, `x = q * d + m`.
    Q4_1,
    /// 32 values: f16 scale + 32 high bits + 4-bit quants, `x = (q - 16) * d`.
    Q5_0,
    /// 32 values: f16 scale and min + 32 high bits + 4-bit quants, `x = q * d + m`.
    Q5_1,
    /// 32 values: f16 scale + 32 signed bytes, `x = q * d`.
    Q8_0,
    /// 32 values: f16 scale and sum + 32 signed bytes (an intermediate type).
    Q8_1,
    /// 256-value "k-quant", 2 bits.
    Q2K,
    /// 256-value "k-quant", 3 bits.
    Q3K,
    /// 256-value "k-quant", 4 bits.
    Q4K,
    /// 256-value "k-quant", 5 bits.
    Q5K,
    /// 256-value "k-quant", 6 bits.
    Q6K,
    /// 256-value "k-quant", 8 bits (f32 scale).
    Q8K,
    /// Importance-matrix quant (not dequantised here).
    IQ2XXS,
    /// Importance-matrix quant (not dequantised here).
    IQ2XS,
    /// Importance-matrix quant (not dequantised here).
    IQ3XXS,
    /// Importance-matrix quant (not dequantised here).
    IQ1S,
    /// Non-linear 4-bit quant (not dequantised here).
    IQ4NL,
    /// Importance-matrix quant (not dequantised here).
    IQ3S,
    /// Importance-matrix quant (not dequantised here).
    IQ2S,
    /// Non-linear 4-bit quant (not dequantised here).
    IQ4XS,
    /// Signed 8-bit integer.
    I8,
    /// Signed 16-bit integer.
    I16,
    /// Signed 32-bit integer.
    I32,
    /// Signed 64-bit integer.
    I64,
    /// 64-bit float.
    F64,
    /// Importance-matrix quant (not dequantised here).
    IQ1M,
    /// bfloat16.
    BF16,
    /// Ternary quant (not dequantised here).
    TQ1_0,
    /// Ternary quant (not dequantised here).
    TQ2_0,
    /// Microscaling FP4 (not dequantised here).
    MXFP4,
}

impl GgmlType {
    /// The type with ggml id `id`, if known.
    pub fn from_id(id: u32) -> Option<Self> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2K,
            11 => Q3K,
            12 => Q4K,
            13 => Q5K,
            14 => Q6K,
            15 => Q8K,
            16 => IQ2XXS,
            17 => IQ2XS,
            18 => IQ3XXS,
            19 => IQ1S,
            20 => IQ4NL,
            21 => IQ3S,
            22 => IQ2S,
            23 => IQ4XS,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            29 => IQ1M,
            30 => BF16,
            34 => TQ1_0,
            35 => TQ2_0,
            39 => MXFP4,
            _ => return None,
        })
    }

    /// The ggml type id.
    pub fn id(self) -> u32 {
        use GgmlType::*;
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q5_0 => 6,
            Q5_1 => 7,
            Q8_0 => 8,
            Q8_1 => 9,
            Q2K => 10,
            Q3K => 11,
            Q4K => 12,
            Q5K => 13,
            Q6K => 14,
            Q8K => 15,
            IQ2XXS => 16,
            IQ2XS => 17,
            IQ3XXS => 18,
            IQ1S => 19,
            IQ4NL => 20,
            IQ3S => 21,
            IQ2S => 22,
            IQ4XS => 23,
            I8 => 24,
            I16 => 25,
            I32 => 26,
            I64 => 27,
            F64 => 28,
            IQ1M => 29,
            BF16 => 30,
            TQ1_0 => 34,
            TQ2_0 => 35,
            MXFP4 => 39,
        }
    }

    /// The name ggml uses for the type (`"q4_1"`, `"f32"`, ...).
    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "f32",
            F16 => "f16",
            Q4_0 => "q4_0",
            Q4_1 => "q4_1",
            Q5_0 => "q5_0",
            Q5_1 => "q5_1",
            Q8_0 => "q8_0",
            Q8_1 => "q8_1",
            Q2K => "q2_K",
            Q3K => "q3_K",
            Q4K => "q4_K",
            Q5K => "q5_K",
            Q6K => "q6_K",
            Q8K => "q8_K",
            IQ2XXS => "iq2_xxs",
            IQ2XS => "iq2_xs",
            IQ3XXS => "iq3_xxs",
            IQ1S => "iq1_s",
            IQ4NL => "iq4_nl",
            IQ3S => "iq3_s",
            IQ2S => "iq2_s",
            IQ4XS => "iq4_xs",
            I8 => "i8",
            I16 => "i16",
            I32 => "i32",
            I64 => "i64",
            F64 => "f64",
            IQ1M => "iq1_m",
            BF16 => "bf16",
            TQ1_0 => "tq1_0",
            TQ2_0 => "tq2_0",
            MXFP4 => "mxfp4",
        }
    }

    /// Number of values in one block (1 for plain scalar types).
    pub fn block_size(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | F16 | BF16 | I8 | I16 | I32 | I64 | F64 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 | IQ4NL | MXFP4 => 32,
            Q2K | Q3K | Q4K | Q5K | Q6K | Q8K | IQ2XXS | IQ2XS | IQ3XXS | IQ1S | IQ3S | IQ2S
            | IQ4XS | IQ1M | TQ1_0 | TQ2_0 => 256,
        }
    }

    /// Number of bytes in one block.
    pub fn type_size(self) -> usize {
        use GgmlType::*;
        match self {
            I8 => 1,
            F16 | BF16 | I16 => 2,
            F32 | I32 => 4,
            I64 | F64 => 8,
            Q4_0 => 18,
            Q4_1 => 20,
            Q5_0 => 22,
            Q5_1 => 24,
            Q8_0 => 34,
            Q8_1 => 36,
            Q2K => 84,
            Q3K => 110,
            Q4K => 144,
            Q5K => 176,
            Q6K => 210,
            Q8K => 292,
            IQ2XXS => 66,
            IQ2XS => 74,
            IQ3XXS => 98,
            IQ1S => 50,
            IQ4NL => 18,
            IQ3S => 110,
            IQ2S => 82,
            IQ4XS => 136,
            IQ1M => 56,
            TQ1_0 => 54,
            TQ2_0 => 66,
            MXFP4 => 17,
        }
    }

    /// Whether [`dequantize`] supports this type.
    pub fn can_dequantize(self) -> bool {
        use GgmlType::*;
        matches!(
            self,
            F32 | F16
                | BF16
                | F64
                | I8
                | I16
                | I32
                | I64
                | Q4_0
                | Q4_1
                | Q5_0
                | Q5_1
                | Q8_0
                | Q2K
                | Q3K
                | Q4K
                | Q5K
                | Q6K
                | Q8K
        )
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

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
