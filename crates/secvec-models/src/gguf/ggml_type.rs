//! The ggml tensor element types: ids, block sizes and byte sizes (llama.cpp's `ggml.h` /
//! `ggml.c` type traits), and which of them this crate can dequantise.

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

    /// Whether [`dequantize`](super::dequantize) supports this type.
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
