//! A parsed GGUF file: typed access to its metadata and its tensors (the parsing itself is in
//! `parse.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::GgmlType;
use super::dequant::dequantize;
use super::parse::parse;
use super::value::MetadataValue;
use super::{GgufError, unpermute_qk};

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
        let parsed = parse(&bytes, &origin)?;
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
