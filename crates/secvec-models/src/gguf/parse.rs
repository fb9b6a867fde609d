//! Parsing of the GGUF header, metadata and tensor descriptions from untrusted bytes (see the
//! module docs of `gguf` for the guarantees).

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::path::Path;

use super::GgmlType;
use super::GgufError;
use super::reader::TensorInfo;
use super::value::MetadataValue;

/// Magic number at the start of every GGUF file (`"GGUF"` read as a little-endian `u32`).
const GGUF_MAGIC: u32 = 0x4655_4747;
/// Alignment used when the file does not declare `general.alignment`.
const DEFAULT_ALIGNMENT: u64 = 32;
/// Metadata key holding the data alignment.
const ALIGNMENT_KEY: &str = "general.alignment";

/// Largest tensor rank accepted (ggml itself uses 4).
pub const MAX_DIMS: usize = 8;
/// Deepest nesting of metadata arrays accepted (an array of arrays has depth 2).
pub const MAX_ARRAY_DEPTH: usize = 8;

/// Bounds-checked little-endian reader over the file bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn truncated(&self, what: String) -> GgufError {
        GgufError::Truncated {
            path: self.path.to_path_buf(),
            what,
            offset: self.pos as u64,
        }
    }

    fn malformed(&self, offset: usize, reason: String) -> GgufError {
        GgufError::Malformed {
            path: self.path.to_path_buf(),
            offset: offset as u64,
            reason,
        }
    }

    /// Takes the next `n` bytes; `what` describes them for the error message.
    fn take(&mut self, n: usize, what: impl FnOnce() -> String) -> Result<&'a [u8], GgufError> {
        let bytes = self
            .pos
            .checked_add(n)
            .and_then(|end| self.buf.get(self.pos..end))
            .ok_or_else(|| self.truncated(what()))?;
        self.pos += n;
        Ok(bytes)
    }

    fn array<const N: usize>(
        &mut self,
        what: impl FnOnce() -> String,
    ) -> Result<[u8; N], GgufError> {
        let pos = self.pos;
        match self.buf.get(pos..).and_then(<[u8]>::first_chunk::<N>) {
            Some(bytes) => {
                self.pos = pos + N;
                Ok(*bytes)
            }
            None => Err(self.truncated(what())),
        }
    }

    fn u32(&mut self, what: impl FnOnce() -> String) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: impl FnOnce() -> String) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// Reads a GGUF string (u64 length + UTF-8 bytes).
    fn string(&mut self, what: impl Fn() -> String) -> Result<String, GgufError> {
        let len = self.u64(|| format!("length of {}", what()))?;
        let start = self.pos;
        let n = usize::try_from(len)
            .ok()
            .filter(|&n| n <= self.remaining())
            .ok_or_else(|| self.truncated(format!("{} ({len} bytes declared)", what())))?;
        let bytes = self.take(n, &what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(GgufError::InvalidUtf8 {
                path: self.path.to_path_buf(),
                what: what(),
                offset: start as u64,
            }),
        }
    }
}

/// Minimum encoded size of one value of GGUF type `ty`, or `None` for an unknown type.
fn min_value_size(ty: u32) -> Option<usize> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 => 8,       // u64 length, possibly empty
        9 => 4 + 8,   // element type + count, possibly empty
        10..=12 => 8, // u64, i64, f64
        _ => return None,
    })
}

/// The result of parsing, before it is moved into a [`GgufFile`](super::GgufFile).
pub(super) struct Parsed {
    pub(super) version: u32,
    pub(super) alignment: u64,
    pub(super) data_offset: usize,
    pub(super) metadata: BTreeMap<String, MetadataValue>,
    pub(super) tensors: Vec<TensorInfo>,
    pub(super) by_name: BTreeMap<String, usize>,
}

/// Parses and validates the whole structure of a GGUF file held in `bytes`; `path` is only used
/// in error messages.
pub(super) fn parse(bytes: &[u8], path: &Path) -> Result<Parsed, GgufError> {
    Parser {
        cur: Cursor {
            buf: bytes,
            pos: 0,
            path,
        },
    }
    .parse()
}

/// Raw tensor description as read, before validation.
struct RawTensorInfo {
    name: String,
    dims: Vec<u64>,
    ggml_type: u32,
    offset: u64,
}

struct Parser<'a> {
    cur: Cursor<'a>,
}

impl Parser<'_> {
    fn parse(mut self) -> Result<Parsed, GgufError> {
        let path = self.cur.path;
        let magic = self.cur.array::<4>(|| "magic number".into()).map_err(|_| {
            let mut found = [0u8; 4];
            for (dst, src) in found.iter_mut().zip(self.cur.buf) {
                *dst = *src;
            }
            GgufError::BadMagic {
                path: path.to_path_buf(),
                found,
            }
        })?;
        if u32::from_le_bytes(magic) != GGUF_MAGIC {
            return Err(GgufError::BadMagic {
                path: path.to_path_buf(),
                found: magic,
            });
        }
        let version = self.cur.u32(|| "version".into())?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion {
                path: path.to_path_buf(),
                version,
            });
        }
        let tensor_count = self.cur.u64(|| "tensor count".into())?;
        let kv_count = self.cur.u64(|| "metadata key/value count".into())?;

        let metadata = self.metadata(kv_count)?;
        let alignment = self.alignment(&metadata)?;
        let raw = self.tensor_infos(tensor_count)?;

        let end_of_infos = self.cur.pos;
        let data_offset = align_up(end_of_infos as u64, alignment)
            .and_then(|off| usize::try_from(off).ok())
            .ok_or_else(|| {
                self.cur
                    .malformed(end_of_infos, "data section offset overflows".into())
            })?;

        let mut tensors = Vec::with_capacity(raw.len());
        let mut by_name = BTreeMap::new();
        for t in raw {
            let info = self.validate_tensor(t, alignment, data_offset)?;
            match by_name.entry(info.name.clone()) {
                Entry::Occupied(_) => {
                    return Err(GgufError::DuplicateTensor {
                        path: path.to_path_buf(),
                        name: info.name,
                    });
                }
                Entry::Vacant(slot) => {
                    slot.insert(tensors.len());
                }
            }
            tensors.push(info);
        }
        Ok(Parsed {
            version,
            alignment,
            data_offset,
            metadata,
            tensors,
            by_name,
        })
    }

    fn metadata(&mut self, kv_count: u64) -> Result<BTreeMap<String, MetadataValue>, GgufError> {
        let mut metadata = BTreeMap::new();
        for i in 0..kv_count {
            let key = self.cur.string(|| format!("key of metadata entry {i}"))?;
            let type_offset = self.cur.pos;
            let ty = self
                .cur
                .u32(|| format!("value type of metadata key {key:?}"))?;
            let value = self.value(&key, ty, type_offset, 0)?;
            match metadata.entry(key) {
                Entry::Occupied(e) => {
                    return Err(GgufError::DuplicateMetadata {
                        path: self.cur.path.to_path_buf(),
                        key: e.key().clone(),
                    });
                }
                Entry::Vacant(slot) => {
                    slot.insert(value);
                }
            }
        }
        Ok(metadata)
    }

    /// Reads one value of type `ty` (whose id was at `type_offset`) for metadata key `key`.
    fn value(
        &mut self,
        key: &str,
        ty: u32,
        type_offset: usize,
        depth: usize,
    ) -> Result<MetadataValue, GgufError> {
        let what = || format!("value of metadata key {key:?}");
        Ok(match ty {
            0 => MetadataValue::U8(u8::from_le_bytes(self.cur.array(what)?)),
            1 => MetadataValue::I8(i8::from_le_bytes(self.cur.array(what)?)),
            2 => MetadataValue::U16(u16::from_le_bytes(self.cur.array(what)?)),
            3 => MetadataValue::I16(i16::from_le_bytes(self.cur.array(what)?)),
            4 => MetadataValue::U32(u32::from_le_bytes(self.cur.array(what)?)),
            5 => MetadataValue::I32(i32::from_le_bytes(self.cur.array(what)?)),
            6 => MetadataValue::F32(f32::from_le_bytes(self.cur.array(what)?)),
            7 => {
                let at = self.cur.pos;
                match self.cur.array::<1>(what)? {
                    [0] => MetadataValue::Bool(false),
                    [1] => MetadataValue::Bool(true),
                    [b] => {
                        return Err(self.cur.malformed(
                            at,
                            format!("metadata key {key:?} holds the bool byte {b}, which is neither 0 nor 1"),
                        ));
                    }
                }
            }
            8 => MetadataValue::String(self.cur.string(what)?),
            9 => self.array(key, depth + 1)?,
            10 => MetadataValue::U64(u64::from_le_bytes(self.cur.array(what)?)),
            11 => MetadataValue::I64(i64::from_le_bytes(self.cur.array(what)?)),
            12 => MetadataValue::F64(f64::from_le_bytes(self.cur.array(what)?)),
            other => {
                return Err(GgufError::InvalidValueType {
                    path: self.cur.path.to_path_buf(),
                    key: key.to_owned(),
                    value_type: other,
                    offset: type_offset as u64,
                });
            }
        })
    }

    /// Reads an array (element type, count, elements); `depth` is 1 for a top-level array.
    fn array(&mut self, key: &str, depth: usize) -> Result<MetadataValue, GgufError> {
        let start = self.cur.pos;
        if depth > MAX_ARRAY_DEPTH {
            return Err(self.cur.malformed(
                start,
                format!("metadata key {key:?} nests arrays more than {MAX_ARRAY_DEPTH} deep"),
            ));
        }
        let elem_type_offset = self.cur.pos;
        let elem_type = self
            .cur
            .u32(|| format!("element type of metadata array {key:?}"))?;
        let count = self
            .cur
            .u64(|| format!("length of metadata array {key:?}"))?;
        let min_size = min_value_size(elem_type).ok_or_else(|| GgufError::InvalidValueType {
            path: self.cur.path.to_path_buf(),
            key: key.to_owned(),
            value_type: elem_type,
            offset: elem_type_offset as u64,
        })?;
        // Every element takes at least `min_size` bytes: refuse counts the file cannot hold
        // before allocating anything.
        let count = usize::try_from(count)
            .ok()
            .filter(|&n| n <= self.cur.remaining() / min_size)
            .ok_or_else(|| {
                self.cur.truncated(format!(
                    "metadata array {key:?} of {count} elements of type {elem_type}"
                ))
            })?;
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            items.push(self.value(key, elem_type, elem_type_offset, depth)?);
        }
        Ok(MetadataValue::Array(items))
    }

    fn alignment(&self, metadata: &BTreeMap<String, MetadataValue>) -> Result<u64, GgufError> {
        let Some(value) = metadata.get(ALIGNMENT_KEY) else {
            return Ok(DEFAULT_ALIGNMENT);
        };
        match value.as_i128().and_then(|v| u32::try_from(v).ok()) {
            Some(a) if a.is_power_of_two() => Ok(u64::from(a)),
            _ => Err(GgufError::WrongMetadataType {
                path: self.cur.path.to_path_buf(),
                key: ALIGNMENT_KEY.to_owned(),
                expected: "a power of two in u32 range",
                found: value.describe(),
            }),
        }
    }

    fn tensor_infos(&mut self, tensor_count: u64) -> Result<Vec<RawTensorInfo>, GgufError> {
        // name length (8) + n_dims (4) + type (4) + offset (8)
        const MIN_TENSOR_INFO: usize = 24;
        let count = usize::try_from(tensor_count)
            .ok()
            .filter(|&n| n <= self.cur.remaining() / MIN_TENSOR_INFO)
            .ok_or_else(|| {
                self.cur
                    .truncated(format!("descriptions of {tensor_count} tensors"))
            })?;
        let mut infos = Vec::with_capacity(count);
        for i in 0..count {
            let name = self.cur.string(|| format!("name of tensor {i}"))?;
            let dims_offset = self.cur.pos;
            let n_dims = self.cur.u32(|| format!("rank of tensor {name:?}"))?;
            let n_dims = usize::try_from(n_dims).ok().filter(|&n| n <= MAX_DIMS).ok_or_else(|| {
                self.cur.malformed(
                    dims_offset,
                    format!("tensor {name:?} has {n_dims} dimensions (at most {MAX_DIMS} are allowed)"),
                )
            })?;
            let mut dims = Vec::with_capacity(n_dims);
            for d in 0..n_dims {
                dims.push(
                    self.cur
                        .u64(|| format!("dimension {d} of tensor {name:?}"))?,
                );
            }
            let ggml_type = self.cur.u32(|| format!("type of tensor {name:?}"))?;
            let offset = self.cur.u64(|| format!("data offset of tensor {name:?}"))?;
            infos.push(RawTensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            });
        }
        Ok(infos)
    }

    fn validate_tensor(
        &self,
        t: RawTensorInfo,
        alignment: u64,
        data_offset: usize,
    ) -> Result<TensorInfo, GgufError> {
        let path = self.cur.path;
        let invalid = |reason: String| GgufError::InvalidTensor {
            path: path.to_path_buf(),
            tensor: t.name.clone(),
            reason,
        };
        let ty =
            GgmlType::from_id(t.ggml_type).ok_or_else(|| GgufError::UnsupportedTensorType {
                path: path.to_path_buf(),
                tensor: t.name.clone(),
                ggml_type: t.ggml_type,
            })?;
        let mut dims = Vec::with_capacity(t.dims.len());
        let mut n_elements: usize = 1;
        for &d in &t.dims {
            let d = usize::try_from(d)
                .ok()
                .filter(|&d| i64::try_from(d).is_ok())
                .ok_or_else(|| invalid(format!("dimension {d} is too large")))?;
            n_elements = n_elements
                .checked_mul(d)
                .ok_or_else(|| invalid(format!("element count of shape {:?} overflows", t.dims)))?;
            dims.push(d);
        }
        let block = ty.block_size();
        let row = dims.first().copied().unwrap_or(1);
        if !row.is_multiple_of(block) {
            return Err(invalid(format!(
                "its rows have {row} elements, not a multiple of the {block}-element {ty} block"
            )));
        }
        let n_bytes = (n_elements / block)
            .checked_mul(ty.type_size())
            .ok_or_else(|| invalid(format!("byte size of shape {:?} overflows", t.dims)))?;
        if !t.offset.is_multiple_of(alignment) {
            return Err(invalid(format!(
                "its data offset {} is not a multiple of the alignment {alignment}",
                t.offset
            )));
        }
        let start = (data_offset as u64).checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(n_bytes as u64));
        let file_len = self.cur.buf.len() as u64;
        match (start, end) {
            (Some(_), Some(e)) if e <= file_len => {}
            _ => {
                return Err(GgufError::TensorOutOfBounds {
                    path: path.to_path_buf(),
                    tensor: t.name.clone(),
                    start: start.unwrap_or(u64::MAX),
                    end: end.unwrap_or(u64::MAX),
                    file_len,
                });
            }
        }
        Ok(TensorInfo {
            name: t.name,
            dims,
            ggml_type: ty,
            offset: t.offset,
            n_elements,
            n_bytes,
        })
    }
}

/// `offset` rounded up to a multiple of `alignment` (a power of two); `None` on overflow.
fn align_up(offset: u64, alignment: u64) -> Option<u64> {
    let mask = alignment.checked_sub(1)?;
    offset.checked_add(mask).map(|v| v & !mask)
}
