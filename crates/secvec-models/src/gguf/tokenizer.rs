//! Rebuilding a Hugging Face `tokenizers` JSON from the tokenizer stored in GGUF metadata.
//!
//! llama.cpp stores the vocabulary as plain metadata (`tokenizer.ggml.*`). For byte-level BPE
//! vocabularies (`tokenizer.ggml.model == "gpt2"`) [`tokenizer_json_from_gguf`] produces the
//! same `tokenizer.json` that Hugging Face transformers builds from the GGUF file (its
//! `GGUFGPTConverter` plus the Llama post-processor), so token ids match transformers exactly.
//! SentencePiece vocabularies (`"llama"`) and others are rejected with
//! [`GgufError::UnsupportedTokenizer`].

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;
use serde::ser::SerializeMap;

use super::{GgufError, GgufFile};

const KEY_MODEL: &str = "tokenizer.ggml.model";
const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
const KEY_MERGES: &str = "tokenizer.ggml.merges";
const KEY_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
const KEY_ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
const KEY_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
const KEY_ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
const KEY_BOS: &str = "tokenizer.ggml.bos_token_id";
const KEY_EOS: &str = "tokenizer.ggml.eos_token_id";
const KEY_PAD: &str = "tokenizer.ggml.padding_token_id";
const KEY_UNK: &str = "tokenizer.ggml.unknown_token_id";
const KEY_CHAT_TEMPLATE: &str = "tokenizer.chat_template";

/// llama.cpp token type of control tokens (`LLAMA_TOKEN_TYPE_CONTROL`).
const TOKEN_TYPE_CONTROL: i32 = 3;
/// llama.cpp token type of user-defined tokens (`LLAMA_TOKEN_TYPE_USER_DEFINED`).
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// The special token ids and BOS/EOS policy declared in GGUF metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GgufSpecialTokens {
    /// `tokenizer.ggml.bos_token_id`.
    pub bos: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unk: Option<u32>,
    /// `tokenizer.ggml.add_bos_token` (false when absent).
    pub add_bos: bool,
    /// `tokenizer.ggml.add_eos_token` (false when absent).
    pub add_eos: bool,
}

impl GgufSpecialTokens {
    /// Reads the special token ids from `file`; absent keys give `None` / `false`.
    ///
    /// # Errors
    ///
    /// [`GgufError::WrongMetadataType`] if a key holds something other than a `u32`-range
    /// integer (ids) or a bool (flags).
    pub fn from_gguf(file: &GgufFile) -> Result<Self, GgufError> {
        Ok(Self {
            bos: file.get_u32_opt(KEY_BOS)?,
            eos: file.get_u32_opt(KEY_EOS)?,
            pad: file.get_u32_opt(KEY_PAD)?,
            unk: file.get_u32_opt(KEY_UNK)?,
            add_bos: file.get_bool_opt(KEY_ADD_BOS)?.unwrap_or(false),
            add_eos: file.get_bool_opt(KEY_ADD_EOS)?.unwrap_or(false),
        })
    }
}

/// The Jinja chat template stored in `tokenizer.chat_template`, if any (a value of another
/// type counts as absent).
pub fn chat_template(file: &GgufFile) -> Option<String> {
    file.get_str_opt(KEY_CHAT_TEMPLATE)
        .ok()
        .flatten()
        .map(str::to_owned)
}

/// Builds a Hugging Face `tokenizer.json` (as a compact JSON string) for the byte-level BPE
/// tokenizer stored in `file`.
///
/// The result mirrors what transformers derives from the GGUF file:
/// * `model`: BPE with `vocab` = `tokenizer.ggml.tokens` (id = index, in id order) and `merges`
///   = `tokenizer.ggml.merges`, each split at its first space;
/// * `added_tokens`: every CONTROL token (type 3, `special: true`) and USER_DEFINED token
///   (type 4, `special: false`) of `tokenizer.ggml.token_type`, in id order;
/// * `ByteLevel` pre-tokenizer (`add_prefix_space` = `tokenizer.ggml.add_space_prefix`, default
///   false) and decoder;
/// * a `TemplateProcessing` post-processor that prepends BOS / appends EOS only if
///   `tokenizer.ggml.add_bos_token` / `add_eos_token` are true (both default to false).
///
/// # Errors
///
/// [`GgufError::MissingMetadata`] if the model, tokens or merges are absent,
/// [`GgufError::UnsupportedTokenizer`] if the model is not `"gpt2"`,
/// [`GgufError::WrongMetadataType`] for mistyped keys and [`GgufError::InvalidTokenizer`] for
/// inconsistent ones (more than `u32::MAX` tokens, a token-type array of another length, a merge
/// without a space, a BOS/EOS id outside the vocabulary).
pub fn tokenizer_json_from_gguf(file: &GgufFile) -> Result<String, GgufError> {
    let invalid = |reason: String| GgufError::InvalidTokenizer {
        path: file.path().to_path_buf(),
        reason,
    };

    let model = file.get_str(KEY_MODEL)?;
    if model != "gpt2" {
        return Err(GgufError::UnsupportedTokenizer {
            path: file.path().to_path_buf(),
            model: model.to_owned(),
        });
    }
    let tokens = file.get_string_array(KEY_TOKENS)?;
    if u32::try_from(tokens.len()).is_err() {
        return Err(invalid(format!(
            "{} tokens do not fit 32-bit ids",
            tokens.len()
        )));
    }
    let merges = file
        .get_string_array(KEY_MERGES)?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .ok_or_else(|| invalid(format!("merge {m:?} has no space")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let token_types = file.get_i32_array_opt(KEY_TOKEN_TYPE)?.unwrap_or_default();
    if !token_types.is_empty() && token_types.len() != tokens.len() {
        return Err(invalid(format!(
            "{KEY_TOKEN_TYPE} has {} entries but there are {} tokens",
            token_types.len(),
            tokens.len()
        )));
    }

    let added_tokens = tokens
        .iter()
        .zip(&token_types)
        .enumerate()
        .filter_map(|(id, (&content, &kind))| {
            let special = match kind {
                TOKEN_TYPE_CONTROL => true,
                TOKEN_TYPE_USER_DEFINED => false,
                _ => return None,
            };
            Some(AddedToken {
                id: id as u32, // < tokens.len() <= u32::MAX, checked above
                content,
                single_word: false,
                lstrip: false,
                rstrip: false,
                normalized: false,
                special,
            })
        })
        .collect();

    let specials = GgufSpecialTokens::from_gguf(file)?;
    let token_for = |id: Option<u32>, what: &str| -> Result<Option<(&str, u32)>, GgufError> {
        match id {
            None => Err(invalid(format!(
                "{what} is requested but the file declares no {what} id"
            ))),
            Some(id) => usize::try_from(id)
                .ok()
                .and_then(|i| tokens.get(i))
                .map(|&t| Some((t, id)))
                .ok_or_else(|| invalid(format!("{what} id {id} is outside the vocabulary"))),
        }
    };
    let bos = if specials.add_bos {
        token_for(specials.bos, "BOS")?
    } else {
        None
    };
    let eos = if specials.add_eos {
        token_for(specials.eos, "EOS")?
    } else {
        None
    };

    let add_prefix_space = file.get_bool_opt(KEY_ADD_SPACE_PREFIX)?.unwrap_or(false);
    let json = TokenizerJson {
        version: "1.0",
        truncation: None,
        padding: None,
        added_tokens,
        normalizer: None,
        pre_tokenizer: ByteLevel {
            kind: "ByteLevel",
            add_prefix_space,
            trim_offsets: true,
            use_regex: true,
        },
        post_processor: TemplateProcessing::llama(bos, eos),
        decoder: ByteLevel {
            kind: "ByteLevel",
            add_prefix_space: true,
            trim_offsets: true,
            use_regex: true,
        },
        model: Bpe {
            kind: "BPE",
            dropout: None,
            unk_token: None,
            continuing_subword_prefix: "",
            end_of_word_suffix: "",
            fuse_unk: false,
            byte_fallback: false,
            ignore_merges: false,
            vocab: Vocab(&tokens),
            merges,
        },
    };
    serde_json::to_string(&json)
        .map_err(|e| invalid(format!("cannot serialise tokenizer JSON: {e}")))
}

/// `tokenizer.json` top level, fields in the order `tokenizers` writes them.
#[derive(Serialize)]
struct TokenizerJson<'a> {
    version: &'static str,
    truncation: Option<()>,
    padding: Option<()>,
    added_tokens: Vec<AddedToken<'a>>,
    normalizer: Option<()>,
    pre_tokenizer: ByteLevel,
    post_processor: TemplateProcessing<'a>,
    decoder: ByteLevel,
    model: Bpe<'a>,
}

#[derive(Serialize)]
struct AddedToken<'a> {
    id: u32,
    content: &'a str,
    single_word: bool,
    lstrip: bool,
    rstrip: bool,
    normalized: bool,
    special: bool,
}

#[derive(Serialize)]
struct ByteLevel {
    #[serde(rename = "type")]
    kind: &'static str,
    add_prefix_space: bool,
    trim_offsets: bool,
    use_regex: bool,
}

#[derive(Serialize)]
struct TemplateProcessing<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    single: Vec<Piece<'a>>,
    pair: Vec<Piece<'a>>,
    special_tokens: BTreeMap<&'a str, SpecialTokenEntry<'a>>,
}

#[derive(Serialize)]
enum Piece<'a> {
    Sequence { id: &'static str, type_id: u32 },
    SpecialToken { id: &'a str, type_id: u32 },
}

#[derive(Serialize)]
struct SpecialTokenEntry<'a> {
    id: &'a str,
    ids: [u32; 1],
    tokens: [&'a str; 1],
}

impl<'a> TemplateProcessing<'a> {
    /// The post-processor of transformers' Llama tokenizer: `[BOS] $A [EOS]` and
    /// `[BOS] $A [EOS] [BOS] $B [EOS]`, each special token present only if given.
    fn llama(bos: Option<(&'a str, u32)>, eos: Option<(&'a str, u32)>) -> Self {
        let special = |t: Option<(&'a str, u32)>, type_id| {
            t.map(|(id, _)| Piece::SpecialToken { id, type_id })
        };
        let sequence = |id, type_id| Some(Piece::Sequence { id, type_id });
        let single = [special(bos, 0), sequence("A", 0), special(eos, 0)];
        let pair = [
            special(bos, 0),
            sequence("A", 0),
            special(eos, 0),
            special(bos, 1),
            sequence("B", 1),
            special(eos, 1),
        ];
        let special_tokens = [bos, eos]
            .into_iter()
            .flatten()
            .map(|(token, id)| {
                (
                    token,
                    SpecialTokenEntry {
                        id: token,
                        ids: [id],
                        tokens: [token],
                    },
                )
            })
            .collect();
        Self {
            kind: "TemplateProcessing",
            single: single.into_iter().flatten().collect(),
            pair: pair.into_iter().flatten().collect(),
            special_tokens,
        }
    }
}

#[derive(Serialize)]
struct Bpe<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    dropout: Option<f32>,
    unk_token: Option<&'a str>,
    continuing_subword_prefix: &'static str,
    end_of_word_suffix: &'static str,
    fuse_unk: bool,
    byte_fallback: bool,
    ignore_merges: bool,
    vocab: Vocab<'a>,
    merges: Vec<(&'a str, &'a str)>,
}

/// The vocabulary as a JSON object in id order.
///
/// Like Python's `{word: i for i, word in enumerate(tokens)}`, a token that occurs twice keeps
/// the position of its first occurrence and the id of its last one.
struct Vocab<'a>(&'a [&'a str]);

impl Serialize for Vocab<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut last_id: HashMap<&str, usize> = HashMap::with_capacity(self.0.len());
        for (id, &token) in self.0.iter().enumerate() {
            last_id.insert(token, id);
        }
        let mut map = serializer.serialize_map(Some(last_id.len()))?;
        let mut written = HashSet::with_capacity(last_id.len());
        for &token in self.0 {
            if written.insert(token) {
                map.serialize_entry(token, &last_id.get(token).copied().unwrap_or_default())?;
            }
        }
        map.end()
    }
}
