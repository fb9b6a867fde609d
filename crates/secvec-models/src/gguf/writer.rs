//! A minimal GGUF v3 writer: metadata and tensors laid out as the reader expects. Used by the
//! reader's tests and by the fuzz harness to make small seed files (the shipped model is
//! 100 MB; a mutation fuzzer wants files of a few kilobytes).

use super::MetadataValue;

/// The GGUF type id of a value.
pub fn type_id(v: &MetadataValue) -> u32 {
    match v {
        MetadataValue::U8(_) => 0,
        MetadataValue::I8(_) => 1,
        MetadataValue::U16(_) => 2,
        MetadataValue::I16(_) => 3,
        MetadataValue::U32(_) => 4,
        MetadataValue::I32(_) => 5,
        MetadataValue::F32(_) => 6,
        MetadataValue::Bool(_) => 7,
        MetadataValue::String(_) => 8,
        MetadataValue::Array(_) => 9,
        MetadataValue::U64(_) => 10,
        MetadataValue::I64(_) => 11,
        MetadataValue::F64(_) => 12,
    }
}

/// Writes a GGUF string (u64 length, then the bytes).
pub fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// Writes a value without its type id.
fn put_value(buf: &mut Vec<u8>, v: &MetadataValue) {
    match v {
        MetadataValue::U8(x) => buf.push(*x),
        MetadataValue::I8(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::U16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::I16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::U32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::I32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::F32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::Bool(x) => buf.push(u8::from(*x)),
        MetadataValue::String(s) => put_str(buf, s),
        MetadataValue::Array(items) => {
            let elem = items.first().map_or(0, type_id);
            buf.extend_from_slice(&elem.to_le_bytes());
            buf.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(buf, item);
            }
        }
        MetadataValue::U64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::I64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::F64(x) => buf.extend_from_slice(&x.to_le_bytes()),
    }
}

/// One tensor to write.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteTensor {
    pub name: String,
    /// GGUF order: `dims[0]` is the contiguous dimension.
    pub dims: Vec<u64>,
    /// The ggml type id (`GgmlType::id`).
    pub ggml_type: u32,
    /// The encoded data (its length is not checked against `dims`, so that tests can write
    /// inconsistent files).
    pub data: Vec<u8>,
}

/// Writes a GGUF v3 file; tensor data is laid out in order, each aligned to `alignment`
/// (which must match `general.alignment` if that key is given), with no trailing padding.
pub fn write_gguf(
    kvs: &[(&str, MetadataValue)],
    tensors: &[WriteTensor],
    alignment: usize,
) -> Vec<u8> {
    let mut buf = Vec::new();
    buf.extend_from_slice(b"GGUF");
    buf.extend_from_slice(&3u32.to_le_bytes());
    buf.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    buf.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for (k, v) in kvs {
        put_str(&mut buf, k);
        buf.extend_from_slice(&type_id(v).to_le_bytes());
        put_value(&mut buf, v);
    }
    let mut offset = 0usize;
    let mut offsets = Vec::new();
    for t in tensors {
        offset = offset.next_multiple_of(alignment);
        offsets.push(offset);
        put_str(&mut buf, &t.name);
        buf.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            buf.extend_from_slice(&d.to_le_bytes());
        }
        buf.extend_from_slice(&t.ggml_type.to_le_bytes());
        buf.extend_from_slice(&(offset as u64).to_le_bytes());
        offset += t.data.len();
    }
    let data_start = buf.len().next_multiple_of(alignment);
    for (t, off) in tensors.iter().zip(offsets) {
        buf.resize(data_start + off, 0);
        buf.extend_from_slice(&t.data);
    }
    buf
}
