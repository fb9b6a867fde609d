//! Parsing of the GGUF header, metadata and tensor descriptions, and typed access to them.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::path::{Path, PathBuf};

use super::dequant::{GgmlType, dequantize};
use super::{GgufError, unpermute_qk};

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

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataValue {
    /// GGUF type 0.
    U8(u8),
    /// GGUF type 1.
    I8(i8),
    /// GGUF type 2.
    U16(u16),
    /// GGUF type 3.
    I16(i16),
    /// GGUF type 4.
    U32(u32),
    /// GGUF type 5.
    I32(i32),
    /// GGUF type 6.
    F32(f32),
    /// GGUF type 7.
    Bool(bool),
    /// GGUF type 8.
    String(String),
    /// GGUF type 9 (elements all have the array's declared element type).
    Array(Vec<MetadataValue>),
    /// GGUF type 10.
    U64(u64),
    /// GGUF type 11.
    I64(i64),
    /// GGUF type 12.
    F64(f64),
}

impl MetadataValue {
    /// The GGUF name of this value's type (`"u32"`, `"string"`, `"array"`, ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::U8(_) => "u8",
            Self::I8(_) => "i8",
            Self::U16(_) => "u16",
            Self::I16(_) => "i16",
            Self::U32(_) => "u32",
            Self::I32(_) => "i32",
            Self::F32(_) => "f32",
            Self::Bool(_) => "bool",
            Self::String(_) => "string",
            Self::Array(_) => "array",
            Self::U64(_) => "u64",
            Self::I64(_) => "i64",
            Self::F64(_) => "f64",
        }
    }

    /// The value as an integer, if it is of an integer type (booleans and floats are not).
    pub fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            Self::U8(v) => v.into(),
            Self::I8(v) => v.into(),
            Self::U16(v) => v.into(),
            Self::I16(v) => v.into(),
            Self::U32(v) => v.into(),
            Self::I32(v) => v.into(),
            Self::U64(v) => v.into(),
            Self::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// The value as a float, if it is numeric (integers are converted, possibly rounding).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => self.as_i128().map(|v| v as f64),
        }
    }

    /// The string, if this is a string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// A short description for error messages: the type and, for scalars, the value.
    fn describe(&self) -> String {
        match self {
            Self::String(s) if s.len() <= 40 => format!("the string {s:?}"),
            Self::String(s) => format!("a string of {} bytes", s.len()),
            Self::Array(a) => match a.first() {
                Some(first) => format!("an array of {} {} values", a.len(), first.type_name()),
                None => "an empty array".to_owned(),
            },
            Self::Bool(b) => format!("the bool {b}"),
            Self::F32(v) => format!("the f32 {v}"),
            Self::F64(v) => format!("the f64 {v}"),
            other => format!(
                "the {} {}",
                other.type_name(),
                other.as_i128().unwrap_or_default()
            ),
        }
    }
}

/// Description of one tensor in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name (e.g. `blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions in GGUF order: `dims[0]` (ggml's `ne[0]`) is the contiguous, fastest-varying
    /// dimension. Reverse it for the row-major (PyTorch) shape.
    pub dims: Vec<usize>,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Offset of the data relative to the start of the data section.
    pub offset: u64,
    /// Number of elements (product of `dims`).
    pub n_elements: usize,
    /// Size of the data in bytes.
    pub n_bytes: usize,
}

impl TensorInfo {
    /// The shape in row-major (PyTorch) order, i.e. `dims` reversed.
    pub fn row_major_shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }
}

/// A parsed GGUF file held in memory.
///
/// Construction validates the whole structure (see the [module docs](super)); afterwards the
/// accessors only fail for absent keys/tensors, unexpected value types and tensor types that
/// cannot be dequantised.
#[derive(Debug, Clone)]
pub struct GgufFile {
    origin: PathBuf,
    bytes: Vec<u8>,
    version: u32,
    alignment: u64,
    data_offset: usize,
    metadata: BTreeMap<String, MetadataValue>,
    tensors: Vec<TensorInfo>,
    by_name: BTreeMap<String, usize>,
}

impl GgufFile {
    /// Reads and parses the file at `path`.
    ///
    /// # Errors
    ///
    /// [`GgufError::Io`] if the file cannot be read, otherwise any parse error of
    /// [`GgufFile::from_bytes`].
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let bytes = std::fs::read(path).map_err(|source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(bytes, path.to_path_buf())
    }

    /// Parses a GGUF file already in memory; `origin` is only used in error messages.
    ///
    /// # Errors
    ///
    /// A [`GgufError`] describing the first structural problem found.
    pub fn from_bytes(bytes: Vec<u8>, origin: PathBuf) -> Result<Self, GgufError> {
        let parsed = Parser {
            cur: Cursor {
                buf: &bytes,
                pos: 0,
                path: &origin,
            },
        }
        .parse()?;
        Ok(Self {
            origin,
            bytes,
            version: parsed.version,
            alignment: parsed.alignment,
            data_offset: parsed.data_offset,
            metadata: parsed.metadata,
            tensors: parsed.tensors,
            by_name: parsed.by_name,
        })
    }

    /// The path given at construction.
    pub fn path(&self) -> &Path {
        &self.origin
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The data alignment in bytes (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute byte offset of the tensor data section.
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    /// All metadata, by key.
    pub fn metadata(&self) -> &BTreeMap<String, MetadataValue> {
        &self.metadata
    }

    /// The raw metadata value for `key`, if present.
    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.metadata.get(key)
    }

    fn missing(&self, key: &str) -> GgufError {
        GgufError::MissingMetadata {
            path: self.origin.clone(),
            key: key.to_owned(),
        }
    }

    fn wrong_type(&self, key: &str, expected: &'static str, found: &MetadataValue) -> GgufError {
        GgufError::WrongMetadataType {
            path: self.origin.clone(),
            key: key.to_owned(),
            expected,
            found: found.describe(),
        }
    }

    /// Applies `convert` to the value of `key`; `Ok(None)` if absent.
    fn get_with<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        convert: impl FnOnce(&'a MetadataValue) -> Option<T>,
    ) -> Result<Option<T>, GgufError> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(v) => convert(v)
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, expected, v)),
        }
    }

    fn integer<T: TryFrom<i128>>(value: &MetadataValue) -> Option<T> {
        value.as_i128().and_then(|v| T::try_from(v).ok())
    }

    /// Integer metadata as `u32`; any integer type is accepted if the value fits.
    ///
    /// # Errors
    ///
    /// [`GgufError::MissingMetadata`] if absent, [`GgufError::WrongMetadataType`] if not an
    /// integer in range.
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        self.get_u32_opt(key)?.ok_or_else(|| self.missing(key))
    }

    /// Like [`GgufFile::get_u32`], but `Ok(None)` if the key is absent.
    ///
    /// # Errors
    ///
    /// [`GgufError::WrongMetadataType`] if present but not an integer in `u32` range.
    pub fn get_u32_opt(&self, key: &str) -> Result<Option<u32>, GgufError> {
        self.get_with(key, "an integer in u32 range", Self::integer)
    }

    /// Integer metadata as `u64`; any integer type is accepted if the value fits.
    ///
    /// # Errors
    ///
    /// As [`GgufFile::get_u32`].
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.get_u64_opt(key)?.ok_or_else(|| self.missing(key))
    }

    /// Like [`GgufFile::get_u64`], but `Ok(None)` if the key is absent.
    ///
    /// # Errors
    ///
    /// As [`GgufFile::get_u32_opt`].
    pub fn get_u64_opt(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.get_with(key, "an integer in u64 range", Self::integer)
    }

    /// Integer metadata as `i64`; any integer type is accepted if the value fits.
    ///
    /// # Errors
    ///
    /// As [`GgufFile::get_u32`].
    pub fn get_i64(&self, key: &str) -> Result<i64, GgufError> {
        self.get_i64_opt(key)?.ok_or_else(|| self.missing(key))
    }

    /// Like [`GgufFile::get_i64`], but `Ok(None)` if the key is absent.
    ///
    /// # Errors
    ///
    /// As [`GgufFile::get_u32_opt`].
    pub fn get_i64_opt(&self, key: &str) -> Result<Option<i64>, GgufError> {
        self.get_with(key, "an integer in i64 range", Self::integer)
    }

    /// Numeric metadata as `f32` (f32, f64 and integer values are accepted and converted).
    ///
    /// # Errors
    ///
    /// [`GgufError::MissingMetadata`] if absent, [`GgufError::WrongMetadataType`] if not
    /// numeric.
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        self.get_f32_opt(key)?.ok_or_else(|| self.missing(key))
    }

    /// Like [`GgufFile::get_f32`], but `Ok(None)` if the key is absent.
    ///
    /// # Errors
    ///
    /// [`GgufError::WrongMetadataType`] if present but not numeric.
    pub fn get_f32_opt(&self, key: &str) -> Result<Option<f32>, GgufError> {
        self.get_with(key, "a number", |v| match *v {
            MetadataValue::F32(f) => Some(f),
            _ => v.as_f64().map(|f| f as f32),
        })
    }

    /// Boolean metadata.
    ///
    /// # Errors
    ///
    /// [`GgufError::MissingMetadata`] if absent, [`GgufError::WrongMetadataType`] if not a bool.
    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        self.get_bool_opt(key)?.ok_or_else(|| self.missing(key))
    }

    /// Like [`GgufFile::get_bool`], but `Ok(None)` if the key is absent.
    ///
    /// # Errors
    ///
    /// [`GgufError::WrongMetadataType`] if present but not a bool.
    pub fn get_bool_opt(&self, key: &str) -> Result<Option<bool>, GgufError> {
        self.get_with(key, "a bool", |v| match *v {
            MetadataValue::Bool(b) => Some(b),
            _ => None,
        })
    }

    /// String metadata.
    ///
    /// # Errors
    ///
    /// [`GgufError::MissingMetadata`] if absent, [`GgufError::WrongMetadataType`] if not a
    /// string.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        self.get_str_opt(key)?.ok_or_else(|| self.missing(key))
    }

    /// Like [`GgufFile::get_str`], but `Ok(None)` if the key is absent.
    ///
    /// # Errors
    ///
    /// [`GgufError::WrongMetadataType`] if present but not a string.
    pub fn get_str_opt(&self, key: &str) -> Result<Option<&str>, GgufError> {
        self.get_with(key, "a string", MetadataValue::as_str)
    }

    /// An array of strings (an empty array is accepted).
    ///
    /// # Errors
    ///
    /// [`GgufError::MissingMetadata`] if absent, [`GgufError::WrongMetadataType`] if not an
    /// array of strings.
    pub fn get_string_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        self.get_string_array_opt(key)?
            .ok_or_else(|| self.missing(key))
    }

    /// Like [`GgufFile::get_string_array`], but `Ok(None)` if the key is absent.
    ///
    /// # Errors
    ///
    /// [`GgufError::WrongMetadataType`] if present but not an array of strings.
    pub fn get_string_array_opt(&self, key: &str) -> Result<Option<Vec<&str>>, GgufError> {
        self.get_with(key, "an array of strings", |v| match v {
            MetadataValue::Array(items) => items.iter().map(MetadataValue::as_str).collect(),
            _ => None,
        })
    }

    /// An array of integers as `i32` (any integer element type is accepted if every value fits;
    /// an empty array is accepted).
    ///
    /// # Errors
    ///
    /// [`GgufError::MissingMetadata`] if absent, [`GgufError::WrongMetadataType`] if not an
    /// array of integers in `i32` range.
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>, GgufError> {
        self.get_i32_array_opt(key)?
            .ok_or_else(|| self.missing(key))
    }

    /// Like [`GgufFile::get_i32_array`], but `Ok(None)` if the key is absent.
    ///
    /// # Errors
    ///
    /// [`GgufError::WrongMetadataType`] if present but not an array of integers in `i32` range.
    pub fn get_i32_array_opt(&self, key: &str) -> Result<Option<Vec<i32>>, GgufError> {
        self.get_with(key, "an array of integers in i32 range", |v| match v {
            MetadataValue::Array(items) => items.iter().map(Self::integer).collect(),
            _ => None,
        })
    }

    /// An array of numbers as `f32` (float and integer element types are accepted).
    ///
    /// # Errors
    ///
    /// [`GgufError::MissingMetadata`] if absent, [`GgufError::WrongMetadataType`] if not a
    /// numeric array.
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>, GgufError> {
        self.get_f32_array_opt(key)?
            .ok_or_else(|| self.missing(key))
    }

    /// Like [`GgufFile::get_f32_array`], but `Ok(None)` if the key is absent.
    ///
    /// # Errors
    ///
    /// [`GgufError::WrongMetadataType`] if present but not a numeric array.
    pub fn get_f32_array_opt(&self, key: &str) -> Result<Option<Vec<f32>>, GgufError> {
        self.get_with(key, "an array of numbers", |v| match v {
            MetadataValue::Array(items) => items
                .iter()
                .map(|item| match *item {
                    MetadataValue::F32(f) => Some(f),
                    _ => item.as_f64().map(|f| f as f32),
                })
                .collect(),
            _ => None,
        })
    }

    /// All tensor descriptions, in file order.
    pub fn tensor_infos(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Whether a tensor called `name` exists.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The description of tensor `name`.
    ///
    /// # Errors
    ///
    /// [`GgufError::MissingTensor`] if there is no such tensor.
    pub fn tensor_info(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.by_name
            .get(name)
            .and_then(|&i| self.tensors.get(i))
            .ok_or_else(|| GgufError::MissingTensor {
                path: self.origin.clone(),
                name: name.to_owned(),
            })
    }

    /// The raw (still quantised) bytes of tensor `name`.
    ///
    /// # Errors
    ///
    /// [`GgufError::MissingTensor`] if there is no such tensor.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8], GgufError> {
        let info = self.tensor_info(name)?;
        self.bytes_of(info)
    }

    fn bytes_of(&self, info: &TensorInfo) -> Result<&[u8], GgufError> {
        // The range was validated at parse time; this is the checked re-derivation of it.
        usize::try_from(info.offset)
            .ok()
            .and_then(|off| self.data_offset.checked_add(off))
            .and_then(|start| Some(start..start.checked_add(info.n_bytes)?))
            .and_then(|range| self.bytes.get(range))
            .ok_or_else(|| GgufError::TensorOutOfBounds {
                path: self.origin.clone(),
                tensor: info.name.clone(),
                start: (self.data_offset as u64).saturating_add(info.offset),
                end: (self.data_offset as u64)
                    .saturating_add(info.offset)
                    .saturating_add(info.n_bytes as u64),
                file_len: self.bytes.len() as u64,
            })
    }

    /// Tensor `name` dequantised to `f32`, with its shape in row-major (PyTorch) order.
    ///
    /// The data is returned in storage order, which is already row-major for the reversed
    /// shape: a GGUF tensor with `ne = [576, 1536]` comes back as a `[1536, 576]` matrix.
    ///
    /// # Errors
    ///
    /// [`GgufError::MissingTensor`] if there is no such tensor,
    /// [`GgufError::UnsupportedTensorType`] if its type cannot be dequantised.
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>), GgufError> {
        let info = self.tensor_info(name)?;
        let bytes = self.bytes_of(info)?;
        let values = dequantize(info.ggml_type, bytes).map_err(|e| match e {
            super::DequantError::Unsupported(_) => GgufError::UnsupportedTensorType {
                path: self.origin.clone(),
                tensor: info.name.clone(),
                ggml_type: info.ggml_type.id(),
            },
            other => GgufError::InvalidTensor {
                path: self.origin.clone(),
                tensor: info.name.clone(),
                reason: other.to_string(),
            },
        })?;
        Ok((values, info.row_major_shape()))
    }

    /// Tensor `name` as a row-major `f32` matrix with llama.cpp's query/key row permutation
    /// undone (see [`unpermute_qk`]); `n_head` is the query head count for `attn_q` and the
    /// key/value head count for `attn_k`. Tensors of rank 1 are treated as a single column.
    ///
    /// # Errors
    ///
    /// As [`GgufFile::tensor_f32`], plus [`GgufError::InvalidPermute`] if the row count is not
    /// a multiple of `2 * n_head` or the tensor has rank above 2.
    pub fn tensor_f32_unpermuted(
        &self,
        name: &str,
        n_head: usize,
    ) -> Result<(Vec<f32>, Vec<usize>), GgufError> {
        let (data, shape) = self.tensor_f32(name)?;
        let (rows, cols) = match shape.as_slice() {
            [rows] => (*rows, 1),
            [rows, cols] => (*rows, *cols),
            _ => (0, 0), // rank 0 or > 2: rejected by the length check below
        };
        let data = unpermute_qk(&data, rows, cols, n_head).map_err(|source| {
            GgufError::InvalidPermute {
                path: self.origin.clone(),
                tensor: name.to_owned(),
                source,
            }
        })?;
        Ok((data, shape))
    }
}

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

/// The result of parsing, before it is moved into a [`GgufFile`].
struct Parsed {
    version: u32,
    alignment: u64,
    data_offset: usize,
    metadata: BTreeMap<String, MetadataValue>,
    tensors: Vec<TensorInfo>,
    by_name: BTreeMap<String, usize>,
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
