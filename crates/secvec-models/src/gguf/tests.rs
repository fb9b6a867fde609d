//! Tests of the GGUF reader on small files written in memory.

use std::path::{Path, PathBuf};

use half::{bf16, f16};

use super::*;

// ---------------------------------------------------------------------------------------------
// A minimal GGUF writer.
// ---------------------------------------------------------------------------------------------

use super::writer::{WriteTensor as TestTensor, put_str, write_gguf};

fn tt(name: &str, dims: &[u64], ggml_type: GgmlType, data: Vec<u8>) -> TestTensor {
    TestTensor {
        name: name.to_string(),
        dims: dims.to_vec(),
        ggml_type: ggml_type.id(),
        data,
    }
}

fn origin() -> PathBuf {
    PathBuf::from("/models/test-model.gguf")
}

fn parse(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
    GgufFile::from_bytes(bytes, origin())
}

fn s(v: &str) -> MetadataValue {
    MetadataValue::String(v.to_owned())
}

// ---------------------------------------------------------------------------------------------
// Hand quantisers (written from the element-order description of each format).
// ---------------------------------------------------------------------------------------------

fn h(v: f32) -> [u8; 2] {
    f16::from_f32(v).to_le_bytes()
}

/// Q4_0 block: `q` are the 4-bit codes of the 32 elements, x = (q - 8) * d.
fn q4_0_block(d: f32, q: &[u8; 32]) -> Vec<u8> {
    let mut b = h(d).to_vec();
    b.extend((0..16).map(|j| q[j] | (q[j + 16] << 4)));
    b
}

fn q4_1_block(d: f32, m: f32, q: &[u8; 32]) -> Vec<u8> {
    let mut b = [h(d), h(m)].concat();
    b.extend((0..16).map(|j| q[j] | (q[j + 16] << 4)));
    b
}

fn q8_0_block(d: f32, q: &[i8; 32]) -> Vec<u8> {
    let mut b = h(d).to_vec();
    b.extend(q.iter().map(|&v| v as u8));
    b
}

/// Q5 blocks: `q` are 5-bit codes; bit 4 of element j goes to bit j of `qh`.
fn q5_parts(q: &[u8; 32]) -> ([u8; 4], Vec<u8>) {
    let mut qh = 0u32;
    for (j, &v) in q.iter().enumerate() {
        qh |= u32::from(v >> 4) << j;
    }
    (
        qh.to_le_bytes(),
        (0..16)
            .map(|j| (q[j] & 15) | ((q[j + 16] & 15) << 4))
            .collect(),
    )
}

fn q5_0_block(d: f32, q: &[u8; 32]) -> Vec<u8> {
    let (qh, qs) = q5_parts(q);
    [h(d).as_slice(), &qh, &qs].concat()
}

fn q5_1_block(d: f32, m: f32, q: &[u8; 32]) -> Vec<u8> {
    let (qh, qs) = q5_parts(q);
    [h(d).as_slice(), &h(m), &qh, &qs].concat()
}

/// The 12 packed scale bytes of Q4_K/Q5_K for 8 six-bit scales and mins.
fn k4_scales(sc: &[u8; 8], mn: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..4 {
        s[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        s[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
        s[j + 8] = (sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4);
    }
    s
}

fn q4_k_block(d: f32, dmin: f32, sc: &[u8; 8], mn: &[u8; 8], q: &[u8; 256]) -> Vec<u8> {
    let mut qs = [0u8; 128];
    for (e, &v) in q.iter().enumerate() {
        let (k, r) = (e / 64, e % 64);
        qs[k * 32 + r % 32] |= v << if r < 32 { 0 } else { 4 };
    }
    [h(d).as_slice(), &h(dmin), &k4_scales(sc, mn), &qs].concat()
}

fn q5_k_block(d: f32, dmin: f32, sc: &[u8; 8], mn: &[u8; 8], q: &[u8; 256]) -> Vec<u8> {
    let mut qs = [0u8; 128];
    let mut qh = [0u8; 32];
    for (e, &v) in q.iter().enumerate() {
        let (k, r) = (e / 64, e % 64);
        let hi = usize::from(r >= 32);
        qs[k * 32 + r % 32] |= (v & 15) << (4 * hi);
        qh[r % 32] |= (v >> 4) << (2 * k + hi);
    }
    [h(d).as_slice(), &h(dmin), &k4_scales(sc, mn), &qh, &qs].concat()
}

/// Q6_K: `q` are 6-bit codes, x = d * sc[e / 16] * (q - 32).
fn q6_k_block(d: f32, sc: &[i8; 16], q: &[u8; 256]) -> Vec<u8> {
    let mut ql = [0u8; 128];
    let mut qh = [0u8; 64];
    for (e, &v) in q.iter().enumerate() {
        let (c, r) = (e / 128, e % 128);
        let (g, l) = (r / 32, r % 32);
        ql[c * 64 + l + (g & 1) * 32] |= (v & 15) << if g < 2 { 0 } else { 4 };
        qh[c * 32 + l] |= (v >> 4) << (2 * g);
    }
    let sc: Vec<u8> = sc.iter().map(|&v| v as u8).collect();
    [ql.as_slice(), &qh, &sc, &h(d)].concat()
}

/// Q2_K: `q` are 2-bit codes, x = d * sc[e/16] * q - dmin * mn[e/16] (4-bit sc, mn).
fn q2_k_block(d: f32, dmin: f32, sc: &[u8; 16], mn: &[u8; 16], q: &[u8; 256]) -> Vec<u8> {
    let mut qs = [0u8; 64];
    for (e, &v) in q.iter().enumerate() {
        let (n, j, half, l) = (e / 128, (e % 128) / 32, (e % 32) / 16, e % 16);
        qs[n * 32 + half * 16 + l] |= v << (2 * j);
    }
    let scales: Vec<u8> = (0..16).map(|i| sc[i] | (mn[i] << 4)).collect();
    [scales.as_slice(), &qs, &h(d), &h(dmin)].concat()
}

/// Q3_K: `q` are 3-bit codes, `sc` 6-bit scales; x = d * (sc[e/16] - 32) * (q - 4).
fn q3_k_block(d: f32, sc: &[u8; 16], q: &[u8; 256]) -> Vec<u8> {
    let mut hmask = [0u8; 32];
    let mut qs = [0u8; 64];
    for (e, &v) in q.iter().enumerate() {
        let (n, j, half, l) = (e / 128, (e % 128) / 32, (e % 32) / 16, e % 16);
        qs[n * 32 + half * 16 + l] |= (v & 3) << (2 * j);
        hmask[half * 16 + l] |= (v >> 2) << (n * 4 + j);
    }
    let mut scales = [0u8; 12];
    for (i, &v) in sc.iter().enumerate() {
        let (low, high) = (v & 15, v >> 4);
        if i < 8 {
            scales[i] |= low;
        } else {
            scales[i - 8] |= low << 4;
        }
        scales[8 + i % 4] |= high << (2 * (i / 4));
    }
    [hmask.as_slice(), &qs, &scales, &h(d)].concat()
}

/// Deterministic pseudo-random bytes (xorshift64).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u8 {
        (self.next() % n) as u8
    }
    fn codes<const N: usize>(&mut self, bound: u64) -> [u8; N] {
        std::array::from_fn(|_| self.below(bound))
    }
}

// ---------------------------------------------------------------------------------------------
// The sample file.
// ---------------------------------------------------------------------------------------------

const F32_VALUES: [f32; 6] = [1.0, -2.5, 3.25, 0.0, 7.5, -0.125];
const F16_VALUES: [f32; 4] = [0.5, -1.0, 2.0, 1024.0];

fn q8_codes(block: usize) -> [i8; 32] {
    std::array::from_fn(|j| (j as i8 - 16) * (block as i8 + 1))
}
fn q4_codes(shift: u8) -> [u8; 32] {
    std::array::from_fn(|j| (j as u8 + shift) % 16)
}

fn sample_kvs() -> Vec<(&'static str, MetadataValue)> {
    vec![
        ("general.architecture", s("llama")),
        ("llama.block_count", MetadataValue::U32(30)),
        ("llama.attention.head_count", MetadataValue::I32(9)),
        ("llama.rope.freq_base", MetadataValue::F32(100000.0)),
        ("some.f64", MetadataValue::F64(0.25)),
        ("some.negative", MetadataValue::I32(-3)),
        ("some.u8", MetadataValue::U8(7)),
        ("some.i8", MetadataValue::I8(-7)),
        ("some.u16", MetadataValue::U16(65535)),
        ("some.i16", MetadataValue::I16(-300)),
        ("some.u64", MetadataValue::U64(u64::MAX)),
        ("some.i64", MetadataValue::I64(-5)),
        ("some.bool", MetadataValue::Bool(true)),
        (
            "some.strings",
            MetadataValue::Array(vec![s("a b"), s("ä"), s("")]),
        ),
        (
            "some.u32s",
            MetadataValue::Array(vec![MetadataValue::U32(1), MetadataValue::U32(3)]),
        ),
        ("some.empty", MetadataValue::Array(vec![])),
        (
            "some.nested",
            MetadataValue::Array(vec![
                MetadataValue::Array(vec![MetadataValue::U8(1), MetadataValue::U8(2)]),
                MetadataValue::Array(vec![MetadataValue::U8(3)]),
            ]),
        ),
    ]
}

fn sample_tensors() -> Vec<TestTensor> {
    let f32_data = F32_VALUES.iter().flat_map(|v| v.to_le_bytes()).collect();
    let f16_data = F16_VALUES.iter().flat_map(|&v| h(v)).collect();
    let q8 = [
        q8_0_block(0.5, &q8_codes(0)),
        q8_0_block(0.25, &q8_codes(1)),
    ]
    .concat();
    vec![
        tt("f32", &[3, 2], GgmlType::F32, f32_data),
        tt("f16", &[2, 2], GgmlType::F16, f16_data),
        tt("q8_0", &[32, 2], GgmlType::Q8_0, q8),
        tt(
            "q4_1",
            &[32],
            GgmlType::Q4_1,
            q4_1_block(0.25, -1.0, &q4_codes(3)),
        ),
        tt(
            "q4_0",
            &[32, 1],
            GgmlType::Q4_0,
            q4_0_block(2.0, &q4_codes(5)),
        ),
    ]
}

fn sample_bytes() -> Vec<u8> {
    write_gguf(&sample_kvs(), &sample_tensors(), 32)
}

fn sample() -> GgufFile {
    parse(sample_bytes()).expect("sample file parses")
}

// ---------------------------------------------------------------------------------------------
// Round trips.
// ---------------------------------------------------------------------------------------------

#[test]
fn parses_header_and_metadata() {
    let f = sample();
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.data_offset() % 32, 0);
    assert_eq!(f.path(), Path::new("/models/test-model.gguf"));
    let kvs = sample_kvs();
    assert_eq!(f.metadata().len(), kvs.len());
    for (k, v) in &kvs {
        assert_eq!(f.get(k), Some(v), "{k}");
    }
    assert_eq!(f.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(f.get_u32("llama.block_count").unwrap(), 30);
    // An i32-typed count is accepted by the u32 getter.
    assert_eq!(f.get_u32("llama.attention.head_count").unwrap(), 9);
    assert_eq!(f.get_u32("some.u8").unwrap(), 7);
    assert_eq!(f.get_u32("some.u16").unwrap(), 65535);
    assert_eq!(f.get_i64("some.i8").unwrap(), -7);
    assert_eq!(f.get_u64("some.u64").unwrap(), u64::MAX);
    assert_eq!(f.get_f32("llama.rope.freq_base").unwrap(), 100000.0);
    assert_eq!(f.get_f32("some.f64").unwrap(), 0.25);
    assert_eq!(f.get_f32("some.u8").unwrap(), 7.0);
    assert!(f.get_bool("some.bool").unwrap());
    assert_eq!(
        f.get_string_array("some.strings").unwrap(),
        vec!["a b", "ä", ""]
    );
    assert_eq!(f.get_i32_array("some.u32s").unwrap(), vec![1, 3]);
    assert_eq!(f.get_f32_array("some.u32s").unwrap(), vec![1.0, 3.0]);
    assert_eq!(f.get_i32_array("some.empty").unwrap(), Vec::<i32>::new());
    assert_eq!(
        f.get_string_array("some.empty").unwrap(),
        Vec::<&str>::new()
    );
    assert_eq!(f.get_u32_opt("absent").unwrap(), None);
    assert_eq!(f.get_str_opt("absent").unwrap(), None);
    assert_eq!(f.get_string_array_opt("absent").unwrap(), None);
    assert_eq!(f.get_i32_array_opt("absent").unwrap(), None);
    assert_eq!(f.get_f32_opt("absent").unwrap(), None);
}

#[test]
fn metadata_getter_errors() {
    let f = sample();
    let err = f.get_u32("absent.key").unwrap_err();
    assert!(matches!(&err, GgufError::MissingMetadata { key, .. } if key == "absent.key"));
    let msg = err.to_string();
    assert!(
        msg.contains("test-model.gguf") && msg.contains("absent.key"),
        "{msg}"
    );

    for (key, result) in [
        ("some.negative", f.get_u32("some.negative").map(|_| ())),
        ("some.u64", f.get_u32("some.u64").map(|_| ())),
        (
            "general.architecture",
            f.get_u32("general.architecture").map(|_| ()),
        ),
        ("some.bool", f.get_f32("some.bool").map(|_| ())),
        (
            "llama.block_count",
            f.get_str("llama.block_count").map(|_| ()),
        ),
        ("some.u32s", f.get_string_array("some.u32s").map(|_| ())),
        ("some.strings", f.get_i32_array("some.strings").map(|_| ())),
        ("some.nested", f.get_i32_array("some.nested").map(|_| ())),
        ("some.u8", f.get_bool("some.u8").map(|_| ())),
    ] {
        let err = result.unwrap_err();
        assert!(
            matches!(&err, GgufError::WrongMetadataType { key: k, .. } if k == key),
            "{key}: {err}"
        );
        assert!(err.to_string().contains("test-model.gguf"));
    }
    // Wrong types are errors for the _opt variants too.
    assert!(f.get_u32_opt("some.negative").is_err());
}

#[test]
fn tensors_round_trip() {
    let f = sample();
    let infos = f.tensor_infos();
    let names: Vec<&str> = infos.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["f32", "f16", "q8_0", "q4_1", "q4_0"]);
    let q8 = f.tensor_info("q8_0").unwrap();
    assert_eq!(q8.dims, vec![32, 2]);
    assert_eq!(q8.row_major_shape(), vec![2, 32]);
    assert_eq!(q8.ggml_type, GgmlType::Q8_0);
    assert_eq!(q8.n_elements, 64);
    assert_eq!(q8.n_bytes, 68);
    assert!(f.has_tensor("q4_1") && !f.has_tensor("nope"));
    assert_eq!(f.tensor_bytes("f32").unwrap().len(), 24);

    let (v, shape) = f.tensor_f32("f32").unwrap();
    assert_eq!(shape, vec![2, 3]);
    assert_eq!(v, F32_VALUES);

    let (v, shape) = f.tensor_f32("f16").unwrap();
    assert_eq!(shape, vec![2, 2]);
    assert_eq!(v, F16_VALUES);

    let (v, shape) = f.tensor_f32("q8_0").unwrap();
    assert_eq!(shape, vec![2, 32]);
    let expected: Vec<f32> = (0..2)
        .flat_map(|b| {
            let d = if b == 0 { 0.5 } else { 0.25 };
            q8_codes(b).map(|q| f32::from(q) * d)
        })
        .collect();
    assert_eq!(v, expected);
    assert_eq!(v[0], -8.0); // (0 - 16) * 1 * 0.5

    let (v, shape) = f.tensor_f32("q4_1").unwrap();
    assert_eq!(shape, vec![32]);
    let expected: Vec<f32> = q4_codes(3)
        .iter()
        .map(|&q| f32::from(q) * 0.25 - 1.0)
        .collect();
    assert_eq!(v, expected);
    assert_eq!(&v[..3], &[-0.25, 0.0, 0.25]);

    let (v, shape) = f.tensor_f32("q4_0").unwrap();
    assert_eq!(shape, vec![1, 32]);
    let expected: Vec<f32> = q4_codes(5)
        .iter()
        .map(|&q| (f32::from(q) - 8.0) * 2.0)
        .collect();
    assert_eq!(v, expected);
    assert_eq!(v[0], -6.0);
}

#[test]
fn custom_alignment_and_version_2() {
    let kvs = vec![("general.alignment", MetadataValue::U32(64))];
    let mut bytes = write_gguf(&kvs, &sample_tensors(), 64);
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let f = parse(bytes).unwrap();
    assert_eq!((f.version(), f.alignment()), (2, 64));
    assert_eq!(f.data_offset() % 64, 0);
    assert_eq!(f.tensor_f32("f32").unwrap().0, F32_VALUES);
    assert_eq!(f.tensor_f32("q4_0").unwrap().0[0], -6.0);
}

#[test]
fn bad_alignment_is_rejected() {
    for bad in [MetadataValue::U32(0), MetadataValue::U32(48), s("32")] {
        let bytes = write_gguf(&[("general.alignment", bad)], &[], 32);
        let err = parse(bytes).unwrap_err();
        assert!(matches!(err, GgufError::WrongMetadataType { .. }), "{err}");
    }
}

// ---------------------------------------------------------------------------------------------
// Block formats.
// ---------------------------------------------------------------------------------------------

#[test]
fn dequantize_scalar_types() {
    let bf: Vec<u8> = [1.5f32, -2.0]
        .iter()
        .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
        .collect();
    assert_eq!(dequantize(GgmlType::BF16, &bf).unwrap(), [1.5, -2.0]);
    assert_eq!(dequantize(GgmlType::I8, &[0xFF, 3]).unwrap(), [-1.0, 3.0]);
    let i32s: Vec<u8> = [-7i32, 9].iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(dequantize(GgmlType::I32, &i32s).unwrap(), [-7.0, 9.0]);
    assert_eq!(
        dequantize(GgmlType::F64, &0.5f64.to_le_bytes()).unwrap(),
        [0.5]
    );
    assert_eq!(
        dequantize(GgmlType::F32, &[0, 0, 0]),
        Err(DequantError::BadLength {
            ty: GgmlType::F32,
            len: 3
        })
    );
    assert_eq!(
        dequantize(GgmlType::IQ2XXS, &[0; 66]),
        Err(DequantError::Unsupported(GgmlType::IQ2XXS))
    );
}

#[test]
fn dequantize_q5_0_and_q5_1() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let q: [u8; 32] = rng.codes(32);
    let got = dequantize(GgmlType::Q5_0, &q5_0_block(0.5, &q)).unwrap();
    let want: Vec<f32> = q.iter().map(|&v| (f32::from(v) - 16.0) * 0.5).collect();
    assert_eq!(got, want);
    let got = dequantize(GgmlType::Q5_1, &q5_1_block(0.125, 2.0, &q)).unwrap();
    let want: Vec<f32> = q.iter().map(|&v| f32::from(v) * 0.125 + 2.0).collect();
    assert_eq!(got, want);
    // Elements 16..32 must use the high half of qh.
    let mut q = [0u8; 32];
    q[20] = 31;
    let got = dequantize(GgmlType::Q5_0, &q5_0_block(1.0, &q)).unwrap();
    assert_eq!((got[20], got[4], got[0]), (15.0, -16.0, -16.0));
}

#[test]
fn dequantize_k_quants() {
    let mut rng = Rng(12345);
    for _ in 0..4 {
        let sc: [u8; 8] = rng.codes(64);
        let mn: [u8; 8] = rng.codes(64);

        let q: [u8; 256] = rng.codes(16);
        let got = dequantize(GgmlType::Q4K, &q4_k_block(0.5, 0.25, &sc, &mn, &q)).unwrap();
        let want: Vec<f32> = (0..256)
            .map(|e| 0.5 * f32::from(sc[e / 32]) * f32::from(q[e]) - 0.25 * f32::from(mn[e / 32]))
            .collect();
        assert_eq!(got, want, "q4_K");

        let q: [u8; 256] = rng.codes(32);
        let got = dequantize(GgmlType::Q5K, &q5_k_block(0.5, 0.25, &sc, &mn, &q)).unwrap();
        let want: Vec<f32> = (0..256)
            .map(|e| 0.5 * f32::from(sc[e / 32]) * f32::from(q[e]) - 0.25 * f32::from(mn[e / 32]))
            .collect();
        assert_eq!(got, want, "q5_K");

        let sc6: [i8; 16] = std::array::from_fn(|_| rng.below(256) as i8);
        let q: [u8; 256] = rng.codes(64);
        let got = dequantize(GgmlType::Q6K, &q6_k_block(0.5, &sc6, &q)).unwrap();
        let want: Vec<f32> = (0..256)
            .map(|e| 0.5 * f32::from(sc6[e / 16]) * (f32::from(q[e]) - 32.0))
            .collect();
        assert_eq!(got, want, "q6_K");

        let sc4: [u8; 16] = rng.codes(16);
        let mn4: [u8; 16] = rng.codes(16);
        let q: [u8; 256] = rng.codes(4);
        let got = dequantize(GgmlType::Q2K, &q2_k_block(0.5, 0.25, &sc4, &mn4, &q)).unwrap();
        let want: Vec<f32> = (0..256)
            .map(|e| 0.5 * f32::from(sc4[e / 16]) * f32::from(q[e]) - 0.25 * f32::from(mn4[e / 16]))
            .collect();
        assert_eq!(got, want, "q2_K");

        let sc3: [u8; 16] = rng.codes(64);
        let q: [u8; 256] = rng.codes(8);
        let got = dequantize(GgmlType::Q3K, &q3_k_block(0.5, &sc3, &q)).unwrap();
        let want: Vec<f32> = (0..256)
            .map(|e| 0.5 * (f32::from(sc3[e / 16]) - 32.0) * (f32::from(q[e]) - 4.0))
            .collect();
        assert_eq!(got, want, "q3_K");
    }

    let mut q8k = 0.5f32.to_le_bytes().to_vec();
    q8k.extend((0..256).map(|i| (i as u8).wrapping_sub(128)));
    q8k.extend([0u8; 32]);
    let got = dequantize(GgmlType::Q8K, &q8k).unwrap();
    assert_eq!((got[0], got[128], got[255]), (-64.0, 0.0, 63.5));
}

#[test]
fn k_quant_tensor_through_the_file() {
    let mut rng = Rng(7);
    let blocks: Vec<([u8; 256], [i8; 16])> = (0..2)
        .map(|_| {
            (
                rng.codes(64),
                std::array::from_fn(|_| rng.below(64) as i8 - 32),
            )
        })
        .collect();
    let data = blocks
        .iter()
        .flat_map(|(q, sc)| q6_k_block(0.25, sc, q))
        .collect();
    let f = parse(write_gguf(
        &[],
        &[tt("w", &[256, 2], GgmlType::Q6K, data)],
        32,
    ))
    .unwrap();
    let (v, shape) = f.tensor_f32("w").unwrap();
    assert_eq!(shape, vec![2, 256]);
    let want: Vec<f32> = blocks
        .iter()
        .flat_map(|(q, sc)| {
            (0..256).map(|e| 0.25 * f32::from(sc[e / 16]) * (f32::from(q[e]) - 32.0))
        })
        .collect();
    assert_eq!(v, want);
}

// ---------------------------------------------------------------------------------------------
// Hostile input.
// ---------------------------------------------------------------------------------------------

/// A header with `n_tensors` tensors and `n_kv` metadata entries, followed by `rest`.
fn header(n_tensors: u64, n_kv: u64, rest: &[u8]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&n_tensors.to_le_bytes());
    b.extend_from_slice(&n_kv.to_le_bytes());
    b.extend_from_slice(rest);
    b
}

#[test]
fn bad_magic() {
    let mut bytes = sample_bytes();
    bytes[..4].copy_from_slice(b"GGML");
    let err = parse(bytes).unwrap_err();
    assert!(
        matches!(err, GgufError::BadMagic { found, .. } if &found == b"GGML"),
        "{err}"
    );
    assert!(err.to_string().contains("test-model.gguf"));
    let err = parse(b"GG".to_vec()).unwrap_err();
    assert!(
        matches!(
            err,
            GgufError::BadMagic {
                found: [b'G', b'G', 0, 0],
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn unsupported_versions() {
    for version in [0u32, 1, 4, 0x0300_0000] {
        let mut bytes = sample_bytes();
        bytes[4..8].copy_from_slice(&version.to_le_bytes());
        let err = parse(bytes).unwrap_err();
        assert!(
            matches!(err, GgufError::UnsupportedVersion { version: v, .. } if v == version),
            "{err}"
        );
    }
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = sample_bytes();
    for len in 0..bytes.len() {
        let result = parse(bytes[..len].to_vec());
        assert!(result.is_err(), "prefix of {len} bytes parsed");
    }
    assert!(parse(bytes).is_ok());
}

#[test]
fn truncation_errors_are_descriptive() {
    let bytes = sample_bytes();
    let err = parse(bytes[..30].to_vec()).unwrap_err();
    assert!(matches!(err, GgufError::Truncated { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("test-model.gguf") && msg.contains("truncated"),
        "{msg}"
    );
    let err = parse(bytes[..bytes.len() - 1].to_vec()).unwrap_err();
    assert!(
        matches!(&err, GgufError::TensorOutOfBounds { tensor, .. } if tensor == "q4_0"),
        "{err}"
    );
}

#[test]
fn corrupted_bytes_never_panic() {
    let bytes = sample_bytes();
    let exercise = |b: Vec<u8>| {
        if let Ok(f) = parse(b) {
            for info in f.tensor_infos() {
                let _ = f.tensor_f32(&info.name);
                let _ = f.tensor_f32_unpermuted(&info.name, 1);
            }
            for key in f.metadata().keys() {
                let _ = (f.get_u32(key), f.get_f32(key), f.get_str(key));
                let _ = (
                    f.get_string_array(key),
                    f.get_i32_array(key),
                    f.get_f32_array(key),
                );
            }
            let _ = tokenizer_json_from_gguf(&f);
        }
    };
    // Every single byte set to a few interesting values.
    for i in 0..bytes.len() {
        for v in [0x00, 0x01, 0x7F, 0x80, 0xFF] {
            let mut b = bytes.clone();
            b[i] = v;
            exercise(b);
        }
    }
    // Random multi-byte corruption.
    let mut rng = Rng(0xDEAD_BEEF);
    for _ in 0..2000 {
        let mut b = bytes.clone();
        for _ in 0..1 + rng.below(8) {
            let i = (rng.next() % b.len() as u64) as usize;
            b[i] = rng.below(256);
        }
        exercise(b);
    }
}

#[test]
fn huge_declared_sizes_fail_without_allocating() {
    // Key string of length u64::MAX.
    let err = parse(header(0, 1, &u64::MAX.to_le_bytes())).unwrap_err();
    assert!(matches!(err, GgufError::Truncated { .. }), "{err}");

    // A string value claiming 2^40 bytes.
    let mut rest = Vec::new();
    put_str(&mut rest, "k");
    rest.extend_from_slice(&8u32.to_le_bytes());
    rest.extend_from_slice(&(1u64 << 40).to_le_bytes());
    rest.extend_from_slice(b"abc");
    let err = parse(header(0, 1, &rest)).unwrap_err();
    assert!(
        matches!(&err, GgufError::Truncated { what, .. } if what.contains("\"k\"")),
        "{err}"
    );

    // Arrays of u32 / strings / arrays claiming far more elements than the file holds.
    for (elem, count) in [
        (4u32, u64::MAX / 4),
        (4, 3),
        (8, 1 << 60),
        (9, 1 << 62),
        (0, u64::MAX),
    ] {
        let mut rest = Vec::new();
        put_str(&mut rest, "arr");
        rest.extend_from_slice(&9u32.to_le_bytes());
        rest.extend_from_slice(&elem.to_le_bytes());
        rest.extend_from_slice(&count.to_le_bytes());
        rest.extend_from_slice(&[0u8; 11]); // two u32s and change: too few for 3 u32s
        let err = parse(header(0, 1, &rest)).unwrap_err();
        assert!(
            matches!(err, GgufError::Truncated { .. }),
            "{elem} x {count}: {err}"
        );
    }

    // Huge metadata and tensor counts.
    assert!(matches!(
        parse(header(0, u64::MAX, &[])),
        Err(GgufError::Truncated { .. })
    ));
    let err = parse(header(u64::MAX, 0, &[0; 64])).unwrap_err();
    assert!(matches!(err, GgufError::Truncated { .. }), "{err}");
}

#[test]
fn deeply_nested_arrays_are_rejected() {
    let nested = |depth: usize| {
        let mut rest = Vec::new();
        put_str(&mut rest, "deep");
        rest.extend_from_slice(&9u32.to_le_bytes());
        for _ in 1..depth {
            rest.extend_from_slice(&9u32.to_le_bytes());
            rest.extend_from_slice(&1u64.to_le_bytes());
        }
        rest.extend_from_slice(&0u32.to_le_bytes());
        rest.extend_from_slice(&1u64.to_le_bytes());
        rest.push(42);
        header(0, 1, &rest)
    };
    let f = parse(nested(MAX_ARRAY_DEPTH)).unwrap();
    let mut v = f.get("deep").unwrap();
    for _ in 0..MAX_ARRAY_DEPTH {
        let MetadataValue::Array(items) = v else {
            panic!("expected an array")
        };
        v = &items[0];
    }
    assert_eq!(v, &MetadataValue::U8(42));
    for depth in [MAX_ARRAY_DEPTH + 1, 100_000] {
        let err = parse(nested(depth)).unwrap_err();
        assert!(matches!(err, GgufError::Malformed { .. }), "{err}");
    }
}

#[test]
fn invalid_strings_types_and_duplicates() {
    // Invalid UTF-8 key.
    let mut rest = Vec::new();
    rest.extend_from_slice(&2u64.to_le_bytes());
    rest.extend_from_slice(&[0xC3, 0x28]);
    rest.extend_from_slice(&0u32.to_le_bytes());
    rest.push(0);
    let err = parse(header(0, 1, &rest)).unwrap_err();
    assert!(
        matches!(err, GgufError::InvalidUtf8 { offset: 32, .. }),
        "{err}"
    );

    // Unknown value type, also as an array element type.
    for (ty, elem) in [(13u32, None), (9, Some(99u32))] {
        let mut rest = Vec::new();
        put_str(&mut rest, "k");
        rest.extend_from_slice(&ty.to_le_bytes());
        if let Some(e) = elem {
            rest.extend_from_slice(&e.to_le_bytes());
            rest.extend_from_slice(&0u64.to_le_bytes());
        }
        rest.extend_from_slice(&[0; 16]);
        let err = parse(header(0, 1, &rest)).unwrap_err();
        assert!(
            matches!(&err, GgufError::InvalidValueType { key, value_type, .. }
                if key == "k" && *value_type == elem.unwrap_or(ty)),
            "{err}"
        );
    }

    // A bool byte other than 0/1.
    let mut rest = Vec::new();
    put_str(&mut rest, "b");
    rest.extend_from_slice(&7u32.to_le_bytes());
    rest.push(2);
    assert!(matches!(
        parse(header(0, 1, &rest)),
        Err(GgufError::Malformed { .. })
    ));

    // Duplicate metadata key.
    let kvs = [("a", MetadataValue::U8(1)), ("a", MetadataValue::U8(2))];
    let err = parse(write_gguf(&kvs, &[], 32)).unwrap_err();
    assert!(
        matches!(&err, GgufError::DuplicateMetadata { key, .. } if key == "a"),
        "{err}"
    );

    // Duplicate tensor name.
    let t = || tt("w", &[1], GgmlType::F32, vec![0; 4]);
    let err = parse(write_gguf(&[], &[t(), t()], 32)).unwrap_err();
    assert!(
        matches!(&err, GgufError::DuplicateTensor { name, .. } if name == "w"),
        "{err}"
    );
}

#[test]
fn invalid_tensor_descriptions() {
    let with = |t: TestTensor| parse(write_gguf(&[], &[t], 32));

    // Too many dimensions.
    let err = with(tt("w", &[1; MAX_DIMS + 1], GgmlType::F32, vec![0; 4])).unwrap_err();
    assert!(matches!(err, GgufError::Malformed { .. }), "{err}");
    // Element count overflow.
    let err = with(tt("w", &[1 << 40, 1 << 40], GgmlType::F32, vec![])).unwrap_err();
    assert!(matches!(err, GgufError::InvalidTensor { .. }), "{err}");
    // Dimension beyond i64.
    let err = with(tt("w", &[u64::MAX], GgmlType::I8, vec![])).unwrap_err();
    assert!(matches!(err, GgufError::InvalidTensor { .. }), "{err}");
    // Row length not a multiple of the block size.
    let err = with(tt("w", &[16, 2], GgmlType::Q4_0, vec![0; 18])).unwrap_err();
    assert!(matches!(err, GgufError::InvalidTensor { .. }), "{err}");
    // Unknown ggml type: rejected when opening.
    let mut t = tt("w", &[4], GgmlType::F32, vec![0; 16]);
    t.ggml_type = 4;
    let err = with(t).unwrap_err();
    assert!(
        matches!(&err, GgufError::UnsupportedTensorType { ggml_type: 4, tensor, .. } if tensor == "w")
    );
    assert!(err.to_string().contains("test-model.gguf"), "{err}");
}

#[test]
fn tensor_data_out_of_bounds() {
    // Data declared larger than what follows.
    let err = parse(write_gguf(
        &[],
        &[tt("w", &[8], GgmlType::F32, vec![0; 16])],
        32,
    ))
    .unwrap_err();
    assert!(
        matches!(&err, GgufError::TensorOutOfBounds { tensor, .. } if tensor == "w"),
        "{err}"
    );
    assert!(err.to_string().contains("test-model.gguf"));

    // Offsets patched to point past the end / to overflow / to be misaligned.
    let good = write_gguf(&[], &[tt("w", &[4], GgmlType::F32, vec![0; 16])], 32);
    // Layout: 24-byte header, name (8 + 1), n_dims (4), dim (8), type (4), offset (8).
    let offset_pos = 24 + 9 + 4 + 8 + 4;
    for (offset, expect_oob) in [(32u64, true), (u64::MAX - 31, true), (8, false)] {
        let mut b = good.clone();
        b[offset_pos..offset_pos + 8].copy_from_slice(&offset.to_le_bytes());
        let err = parse(b).unwrap_err();
        if expect_oob {
            assert!(
                matches!(err, GgufError::TensorOutOfBounds { .. }),
                "{offset}: {err}"
            );
        } else {
            assert!(
                matches!(err, GgufError::InvalidTensor { .. }),
                "{offset}: {err}"
            );
        }
    }
}

#[test]
fn unsupported_type_fails_on_access() {
    let f = parse(write_gguf(
        &[],
        &[tt("iq", &[256], GgmlType::IQ2XXS, vec![0; 66])],
        32,
    ))
    .unwrap();
    assert_eq!(f.tensor_info("iq").unwrap().ggml_type, GgmlType::IQ2XXS);
    let err = f.tensor_f32("iq").unwrap_err();
    assert!(
        matches!(&err, GgufError::UnsupportedTensorType { ggml_type: 16, tensor, .. } if tensor == "iq")
    );
    let msg = err.to_string();
    assert!(
        msg.contains("iq2_xxs") && msg.contains("test-model.gguf"),
        "{msg}"
    );
}

#[test]
fn missing_tensor_names_the_file() {
    let f = sample();
    let err = f.tensor_f32("blk.0.attn_q.weight").unwrap_err();
    assert!(matches!(&err, GgufError::MissingTensor { name, path }
        if name == "blk.0.attn_q.weight" && path == &origin()));
    let msg = err.to_string();
    assert!(
        msg.contains("/models/test-model.gguf") && msg.contains("blk.0.attn_q.weight"),
        "{msg}"
    );
}

#[test]
fn io_error_names_the_file() {
    let err = GgufFile::open(Path::new("/nonexistent/dir/model.gguf")).unwrap_err();
    assert!(matches!(err, GgufError::Io { .. }));
    assert!(err.to_string().contains("/nonexistent/dir/model.gguf"));
}

// ---------------------------------------------------------------------------------------------
// Q/K permutation.
// ---------------------------------------------------------------------------------------------

#[test]
fn permute_matches_llama_cpp_and_unpermute_inverts_it() {
    // One head of 8 rows: llama.cpp interleaves the two halves: rows 0,4,1,5,2,6,3,7.
    let cols = 3;
    let rows = 8;
    let data: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
    let permuted = permute_qk(&data, rows, cols, 1).unwrap();
    let order: Vec<usize> = permuted
        .chunks(cols)
        .map(|r| r[0] as usize / cols)
        .collect();
    assert_eq!(order, [0, 4, 1, 5, 2, 6, 3, 7]);
    assert_eq!(unpermute_qk(&permuted, rows, cols, 1).unwrap(), data);

    // Several heads: permutation stays within each head.
    for (rows, cols, heads) in [(12, 2, 3), (16, 5, 2), (16, 1, 4), (24, 4, 3)] {
        let data: Vec<f32> = (0..rows * cols).map(|v| v as f32 * 0.5).collect();
        let p = permute_qk(&data, rows, cols, heads).unwrap();
        assert_ne!(p, data);
        assert_eq!(unpermute_qk(&p, rows, cols, heads).unwrap(), data);
        assert_eq!(
            permute_qk(
                &unpermute_qk(&data, rows, cols, heads).unwrap(),
                rows,
                cols,
                heads
            )
            .unwrap(),
            data
        );
    }
    let p = permute_qk(&(0..12).map(|v| v as f32).collect::<Vec<_>>(), 12, 1, 3).unwrap();
    assert_eq!(
        p,
        [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0, 8.0, 10.0, 9.0, 11.0]
    );
}

#[test]
fn permute_rejects_bad_shapes() {
    let data = vec![0.0; 12];
    assert!(unpermute_qk(&data, 12, 1, 4).is_err()); // 12 % 8 != 0
    assert!(unpermute_qk(&data, 12, 1, 0).is_err());
    assert!(unpermute_qk(&data, 6, 2, 3).is_ok());
    assert!(unpermute_qk(&data, 6, 1, 3).is_err()); // 6 != 12 values
    assert!(unpermute_qk(&data, 6, 3, 3).is_err()); // 18 != 12 values
    assert!(unpermute_qk(&data, 12, 1, usize::MAX).is_err());
    assert_eq!(unpermute_qk(&[], 0, 5, 2).unwrap(), Vec::<f32>::new());
    assert_eq!(unpermute_qk(&[], 4, 0, 2).unwrap(), Vec::<f32>::new());
}

#[test]
fn tensor_unpermuted_through_the_file() {
    // GGUF ne = [cols=2, rows=4], 2 heads.
    let values: Vec<f32> = (0..8).map(|v| v as f32).collect();
    let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let f = parse(write_gguf(
        &[],
        &[tt("attn_k", &[2, 4], GgmlType::F32, data)],
        32,
    ))
    .unwrap();
    let (v, shape) = f.tensor_f32_unpermuted("attn_k", 2).unwrap();
    assert_eq!(shape, vec![4, 2]);
    assert_eq!(v, unpermute_qk(&values, 4, 2, 2).unwrap());
    let err = f.tensor_f32_unpermuted("attn_k", 4).unwrap_err();
    assert!(matches!(err, GgufError::InvalidPermute { .. }), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Tokenizer.
// ---------------------------------------------------------------------------------------------

const TOKENS: [&str; 14] = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "h",
    "e",
    "l",
    "o",
    "Ġ",
    "he",
    "ll",
    "llo",
    "hello",
    "Ġhe",
    "<tool>",
];
const MERGES: [&str; 5] = ["h e", "l l", "ll o", "he llo", "Ġ he"];

fn tokenizer_file(model: &str, add_bos: bool) -> GgufFile {
    let strings = |v: &[&str]| MetadataValue::Array(v.iter().map(|t| s(t)).collect());
    let types = TOKENS
        .iter()
        .enumerate()
        .map(|(i, _)| {
            MetadataValue::I32(match i {
                0..=2 => 3,
                13 => 4,
                _ => 1,
            })
        })
        .collect();
    let kvs = vec![
        ("tokenizer.ggml.model", s(model)),
        ("tokenizer.ggml.tokens", strings(&TOKENS)),
        ("tokenizer.ggml.merges", strings(&MERGES)),
        ("tokenizer.ggml.token_type", MetadataValue::Array(types)),
        ("tokenizer.ggml.bos_token_id", MetadataValue::U32(1)),
        ("tokenizer.ggml.eos_token_id", MetadataValue::U32(2)),
        ("tokenizer.ggml.padding_token_id", MetadataValue::I32(2)),
        ("tokenizer.ggml.add_bos_token", MetadataValue::Bool(add_bos)),
        ("tokenizer.chat_template", s("{{ messages }}")),
    ];
    parse(write_gguf(&kvs, &[], 32)).unwrap()
}

#[test]
fn tokenizer_json_structure() {
    let f = tokenizer_file("gpt2", false);
    let json: serde_json::Value =
        serde_json::from_str(&tokenizer_json_from_gguf(&f).unwrap()).unwrap();
    let keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut sorted_expected = [
        "version",
        "truncation",
        "padding",
        "added_tokens",
        "normalizer",
        "pre_tokenizer",
        "post_processor",
        "decoder",
        "model",
    ];
    let mut sorted_keys = keys.clone();
    sorted_keys.sort_unstable();
    sorted_expected.sort_unstable();
    assert_eq!(sorted_keys, sorted_expected);

    let expected = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [
            {"id": 0, "content": "<|endoftext|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 1, "content": "<|im_start|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 2, "content": "<|im_end|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 13, "content": "<tool>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": false},
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {}},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": TOKENS.iter().enumerate().map(|(i, t)| (t.to_string(), serde_json::json!(i))).collect::<serde_json::Map<_, _>>(),
            "merges": MERGES.iter().map(|m| m.split_once(' ').map(|(a, b)| vec![a, b]).unwrap()).collect::<Vec<_>>()},
    });
    assert_eq!(json, expected);

    // The vocabulary is written in id order.
    let text = tokenizer_json_from_gguf(&f).unwrap();
    let first = text
        .find("\"vocab\":{\"<|endoftext|>\":0,\"<|im_start|>\":1")
        .is_some();
    assert!(first, "{text}");
}

#[test]
fn tokenizer_json_loads_in_tokenizers() {
    let f = tokenizer_file("gpt2", false);
    let tok: tokenizers::Tokenizer = tokenizer_json_from_gguf(&f).unwrap().parse().unwrap();
    let ids = tok
        .encode("hello<|im_start|> he<tool>", true)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_eq!(ids, [11, 1, 12, 13]);
    assert_eq!(tok.decode(&[11, 12], false).unwrap(), "hello he");

    // With add_bos_token the BOS id is prepended.
    let f = tokenizer_file("gpt2", true);
    let json = tokenizer_json_from_gguf(&f).unwrap();
    let tok: tokenizers::Tokenizer = json.parse().unwrap();
    assert_eq!(tok.encode("hello", true).unwrap().get_ids(), [1, 11]);
    assert_eq!(tok.encode("hello", false).unwrap().get_ids(), [11]);
}

#[test]
fn tokenizer_metadata_helpers() {
    let f = tokenizer_file("gpt2", true);
    let sp = GgufSpecialTokens::from_gguf(&f).unwrap();
    assert_eq!(
        sp,
        GgufSpecialTokens {
            bos: Some(1),
            eos: Some(2),
            pad: Some(2),
            unk: None,
            add_bos: true,
            add_eos: false
        }
    );
    assert_eq!(chat_template(&f).as_deref(), Some("{{ messages }}"));
    assert_eq!(chat_template(&sample()), None);

    let err = tokenizer_json_from_gguf(&tokenizer_file("llama", false)).unwrap_err();
    assert!(
        matches!(&err, GgufError::UnsupportedTokenizer { model, .. } if model == "llama"),
        "{err}"
    );
    assert!(err.to_string().contains("test-model.gguf"));
    let err = tokenizer_json_from_gguf(&sample()).unwrap_err();
    assert!(matches!(err, GgufError::MissingMetadata { .. }), "{err}");
}
