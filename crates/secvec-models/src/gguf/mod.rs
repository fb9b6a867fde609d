//! A reader for GGUF (v2 and v3) model files that treats the file as untrusted input.
//!
//! GGUF is the single-file format of llama.cpp: a small header, a table of typed metadata
//! key/values (architecture hyper-parameters, the tokenizer vocabulary, the chat template),
//! a table of tensor descriptions and finally the (often block-quantised) tensor data.
//!
//! # Why hand-written
//!
//! The maintained GGUF readers are parts of whole tensor libraries (`candle-core`, the ggml
//! bindings). We only need to parse the container and dequantise tensors to `f32` before handing
//! them to Burn, so pulling in a second tensor framework is not worth it. The format is small
//! enough that a careful, bounds-checked reader fits in a few hundred lines.
//!
//! # Untrusted input
//!
//! Every read is bounds-checked against the buffer and all size arithmetic uses `checked_*`
//! operations. Nothing is allocated from a declared count or length before checking that the
//! remaining bytes could actually hold that many items, array nesting is capped, tensor ranks are
//! capped at [`MAX_DIMS`], and every tensor's byte range is validated when the file is opened, so
//! later accesses cannot fail on bounds. Malformed input yields a [`GgufError`] naming the file
//! and the cause; no input makes the reader panic.
//!
//! Tensor types: a tensor whose ggml type id is not known at all (so its byte size cannot be
//! computed and checked) makes [`GgufFile::open`] fail with [`GgufError::UnsupportedTensorType`].
//! A known type that this module cannot dequantise (the `IQ*` / ternary / MXFP4 families) opens
//! fine and only fails with the same error when that tensor is requested through
//! [`GgufFile::tensor_f32`]. See [`GgmlType::can_dequantize`] for the supported list.
//!
//! # Layout conventions
//!
//! GGUF stores dimensions fastest-varying first (`ne[0]` is the contiguous dimension). A GGUF
//! tensor with `ne = [576, 1536]` is the PyTorch/row-major matrix `[1536, 576]`;
//! [`GgufFile::tensor_f32`] returns the row-major shape, [`TensorInfo::dims`] the GGUF order.
//!
//! llama.cpp's converter permutes the rows of the attention query/key projections of Llama-family
//! models (to switch RoPE from "rotate half" to interleaved pairs); [`unpermute_qk`] undoes that.

mod dequant;
mod ggml_type;
mod parse;
mod reader;
pub mod tokenizer;
mod value;
pub mod writer;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use dequant::{DequantError, dequantize};
pub use ggml_type::GgmlType;
pub use parse::{MAX_ARRAY_DEPTH, MAX_DIMS};
pub use reader::{GgufFile, TensorInfo};
pub use tokenizer::{GgufSpecialTokens, chat_template, tokenizer_json_from_gguf};
pub use value::MetadataValue;

/// Everything that can go wrong while reading a GGUF file.
///
/// Every variant names the file it concerns (`path`) and the cause in plain words.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// The file could not be read from disk.
    #[error("cannot read GGUF file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The file does not start with the magic bytes `GGUF`.
    #[error(
        "{} is not a GGUF file: it starts with bytes {found:02x?} instead of the magic \"GGUF\"",
        path.display()
    )]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The first four bytes found (zero-padded if the file is shorter).
        found: [u8; 4],
    },

    /// The GGUF version is not 2 or 3 (this includes big-endian files, whose version reads
    /// byte-swapped).
    #[error(
        "{}: unsupported GGUF version {version} (only little-endian versions 2 and 3 are supported)",
        path.display()
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version field as read (little-endian).
        version: u32,
    },

    /// The file ends before a structure that it declares.
    #[error("{}: file is truncated or corrupt: {what} at byte offset {offset} runs past the end of the file", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What was being read.
        what: String,
        /// Byte offset at which the read started.
        offset: u64,
    },

    /// A metadata value (or array element) has a type id that GGUF does not define.
    #[error("{}: metadata key {key:?} has unknown value type {value_type} (at byte offset {offset})", path.display())]
    InvalidValueType {
        /// The file.
        path: PathBuf,
        /// The metadata key being read.
        key: String,
        /// The type id found.
        value_type: u32,
        /// Byte offset of the type id.
        offset: u64,
    },

    /// A string in the file is not valid UTF-8.
    #[error("{}: {what} at byte offset {offset} is not valid UTF-8", path.display())]
    InvalidUtf8 {
        /// The file.
        path: PathBuf,
        /// Which string.
        what: String,
        /// Byte offset of the string's bytes.
        offset: u64,
    },

    /// A structural rule of the format is violated (bad alignment value, arrays nested too
    /// deeply, a boolean that is neither 0 nor 1, ...).
    #[error("{}: malformed GGUF file: {reason} (at byte offset {offset})", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Byte offset of the offending structure.
        offset: u64,
        /// What is wrong.
        reason: String,
    },

    /// The same metadata key occurs twice.
    #[error("{}: metadata key {key:?} occurs more than once", path.display())]
    DuplicateMetadata {
        /// The file.
        path: PathBuf,
        /// The repeated key.
        key: String,
    },

    /// A tensor description is invalid (too many dimensions, element count overflow, a row
    /// length that is not a multiple of the quantisation block, a misaligned offset, ...).
    #[error("{}: tensor {tensor:?} is invalid: {reason}", path.display())]
    InvalidTensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// What is wrong.
        reason: String,
    },

    /// Two tensors have the same name.
    #[error("{}: tensor name {name:?} occurs more than once", path.display())]
    DuplicateTensor {
        /// The file.
        path: PathBuf,
        /// The repeated name.
        name: String,
    },

    /// A tensor's data does not lie inside the file.
    #[error(
        "{}: data of tensor {tensor:?} (bytes {start}..{end}) lies outside the file ({file_len} bytes)",
        path.display()
    )]
    TensorOutOfBounds {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// Absolute start offset of the data (saturated at `u64::MAX` on overflow).
        start: u64,
        /// Absolute end offset of the data (saturated at `u64::MAX` on overflow).
        end: u64,
        /// Size of the file.
        file_len: u64,
    },

    /// A tensor's ggml type is unknown (reported by `open`) or cannot be dequantised (reported
    /// when the tensor is requested).
    #[error(
        "{}: tensor {tensor:?} has ggml type {} (id {ggml_type}), which this reader cannot {}",
        path.display(),
        GgmlType::from_id(*ggml_type).map_or("<unknown>", GgmlType::name),
        if GgmlType::from_id(*ggml_type).is_some() { "dequantise" } else { "read" }
    )]
    UnsupportedTensorType {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The ggml type id.
        ggml_type: u32,
    },

    /// The requested tensor is not in the file.
    #[error("{}: the file has no tensor named {name:?}", path.display())]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The requested name.
        name: String,
    },

    /// A required metadata key is absent.
    #[error("{}: the file has no metadata key {key:?}", path.display())]
    MissingMetadata {
        /// The file.
        path: PathBuf,
        /// The requested key.
        key: String,
    },

    /// A metadata value has a type (or value) that the caller cannot use.
    #[error("{}: metadata key {key:?} should be {expected} but is {found}", path.display())]
    WrongMetadataType {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What the caller asked for.
        expected: &'static str,
        /// A short description of what was found.
        found: String,
    },

    /// The tokenizer stored in the file is of a kind this module cannot convert.
    #[error(
        "{}: tokenizer model {model:?} is not supported (only \"gpt2\" byte-level BPE is)",
        path.display()
    )]
    UnsupportedTokenizer {
        /// The file.
        path: PathBuf,
        /// The value of `tokenizer.ggml.model`.
        model: String,
    },

    /// The tokenizer metadata is inconsistent.
    #[error("{}: invalid tokenizer metadata: {reason}", path.display())]
    InvalidTokenizer {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A tensor could not be un-permuted (its row count does not fit the head count).
    #[error("{}: cannot un-permute tensor {tensor:?}: {source}", path.display())]
    InvalidPermute {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The shape problem.
        #[source]
        source: PermuteError,
    },
}

/// A matrix shape that does not fit the query/key head permutation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a {n_rows}x{n_cols} matrix ({len} values) cannot be split into {n_head} heads of pairs: \
     the row count must be a multiple of 2 * n_head and the data length must be rows * cols"
)]
pub struct PermuteError {
    /// Declared number of rows.
    pub n_rows: usize,
    /// Declared number of columns.
    pub n_cols: usize,
    /// Declared number of heads.
    pub n_head: usize,
    /// Actual number of values given.
    pub len: usize,
}

/// Checks the shape and returns `(head_dim, half)`; on success `n_rows * n_cols == len`.
fn permute_geometry(
    len: usize,
    n_rows: usize,
    n_cols: usize,
    n_head: usize,
) -> Result<(usize, usize), PermuteError> {
    let err = PermuteError {
        n_rows,
        n_cols,
        n_head,
        len,
    };
    let pairs = n_head.checked_mul(2).ok_or_else(|| err.clone())?;
    if pairs == 0 || !n_rows.is_multiple_of(pairs) || n_rows.checked_mul(n_cols) != Some(len) {
        return Err(err);
    }
    let head_dim = n_rows / n_head;
    Ok((head_dim, head_dim / 2))
}

/// Builds a new row order: output row `i` is input row `source_row(i)`.
fn reorder_rows(
    data: &[f32],
    n_rows: usize,
    n_cols: usize,
    source_row: impl Fn(usize) -> usize,
) -> Vec<f32> {
    if n_cols == 0 {
        return Vec::new();
    }
    let rows: Vec<&[f32]> = data.chunks_exact(n_cols).collect();
    let mut out = Vec::with_capacity(data.len());
    for r in 0..n_rows {
        // `source_row` is a permutation of 0..n_rows and rows.len() == n_rows.
        if let Some(row) = rows.get(source_row(r)) {
            out.extend_from_slice(row);
        }
    }
    out
}

/// Undoes the query/key row permutation that llama.cpp's `convert_hf_to_gguf.py` applies to
/// Llama-family attention projections.
///
/// `data` is a row-major `[n_rows, n_cols]` matrix (PyTorch layout, as returned by
/// [`GgufFile::tensor_f32`]); `n_head` is the number of query heads for `attn_q` and the number
/// of key/value heads for `attn_k`. Equivalent to transformers' GGUF loader:
/// `w.reshape(n_head, rows // n_head // 2, 2, cols).swapaxes(2, 1).reshape(rows, cols)`.
///
/// # Errors
///
/// [`PermuteError`] if `n_rows` is not a multiple of `2 * n_head` (or `n_head == 0`) or
/// `data.len() != n_rows * n_cols`.
pub fn unpermute_qk(
    data: &[f32],
    n_rows: usize,
    n_cols: usize,
    n_head: usize,
) -> Result<Vec<f32>, PermuteError> {
    let (head_dim, half) = permute_geometry(data.len(), n_rows, n_cols, n_head)?;
    // Output row h*hd + j*half + i comes from permuted row h*hd + 2*i + j.
    Ok(reorder_rows(data, n_rows, n_cols, |r| {
        let (h, within) = (r / head_dim, r % head_dim);
        let (j, i) = (within / half, within % half);
        h * head_dim + 2 * i + j
    }))
}

/// Applies llama.cpp's query/key row permutation (the inverse of [`unpermute_qk`]).
///
/// Equivalent to `w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows,
/// cols)` in `convert_hf_to_gguf.py`. Provided mainly to test [`unpermute_qk`].
///
/// # Errors
///
/// Same conditions as [`unpermute_qk`].
pub fn permute_qk(
    data: &[f32],
    n_rows: usize,
    n_cols: usize,
    n_head: usize,
) -> Result<Vec<f32>, PermuteError> {
    let (head_dim, half) = permute_geometry(data.len(), n_rows, n_cols, n_head)?;
    // Output row h*hd + 2*i + j comes from original row h*hd + j*half + i.
    Ok(reorder_rows(data, n_rows, n_cols, |r| {
        let (h, within) = (r / head_dim, r % head_dim);
        let (i, j) = (within / 2, within % 2);
        h * head_dim + j * half + i
    }))
}
