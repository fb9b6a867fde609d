//! The text tokenizer of a model: a Hugging Face `tokenizers::Tokenizer`, its special tokens and
//! its chat template.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::chat::{ChatTemplate, Message};
use crate::error::{ModelError, Result};

/// Special token ids of a model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos: Option<u32>,
    /// Every id that ends generation.
    pub eos: Vec<u32>,
    pub pad: Option<u32>,
}

/// Tokenizer, special tokens and chat template.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    chat: Option<ChatTemplate>,
    pub special: SpecialTokens,
    origin: PathBuf,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("origin", &self.origin)
            .field("special", &self.special)
            .finish_non_exhaustive()
    }
}

fn token_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o
            .get("content")
            .and_then(|c| c.as_str())
            .map(str::to_string),
        _ => None,
    }
}

impl TextTokenizer {
    /// Builds from parts. `chat_template` is `(source, origin)`.
    pub fn new(
        inner: tokenizers::Tokenizer,
        chat_template: Option<(String, PathBuf)>,
        special: SpecialTokens,
        origin: PathBuf,
    ) -> Result<Self> {
        let text_of = |id: Option<u32>| id.and_then(|id| inner.id_to_token(id)).unwrap_or_default();
        let bos = text_of(special.bos);
        let eos = text_of(special.eos.first().copied());
        let chat = chat_template
            .map(|(src, path)| ChatTemplate::new(&src, &path, &bos, &eos))
            .transpose()?;
        Ok(Self {
            inner,
            chat,
            special,
            origin,
        })
    }

    /// Parses a `tokenizer.json` string; `origin` names it in errors.
    pub fn parse_tokenizer_json(json: &str, origin: &Path) -> Result<tokenizers::Tokenizer> {
        json.parse::<tokenizers::Tokenizer>()
            .map_err(|e| ModelError::Tokenizer {
                path: origin.to_path_buf(),
                cause: e.to_string(),
            })
    }

    /// Loads `tokenizer.json`, `tokenizer_config.json` (chat template, special tokens) and
    /// `chat_template.jinja` from a Hugging Face model directory. `extra_eos` adds ids from
    /// `config.json` / `generation_config.json`.
    pub fn from_hf_dir(dir: &Path, extra_eos: &[u32], pad: Option<u32>) -> Result<Self> {
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.is_file() {
            return Err(ModelError::MissingTokenizer {
                dir: dir.to_path_buf(),
            });
        }
        let json = std::fs::read_to_string(&tok_path).map_err(|e| ModelError::io(&tok_path, e))?;
        let inner = Self::parse_tokenizer_json(&json, &tok_path)?;

        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Value = if cfg_path.is_file() {
            let text =
                std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
            serde_json::from_str(&text).map_err(|source| ModelError::Json {
                path: cfg_path.clone(),
                source,
            })?
        } else {
            Value::Null
        };
        let id_of = |key: &str| {
            cfg.get(key)
                .and_then(token_text)
                .and_then(|t| inner.token_to_id(&t))
        };
        let mut eos: Vec<u32> = id_of("eos_token").into_iter().collect();
        for &id in extra_eos {
            if !eos.contains(&id) {
                eos.push(id);
            }
        }
        let special = SpecialTokens {
            bos: id_of("bos_token"),
            eos,
            pad: pad.or_else(|| id_of("pad_token")),
        };

        let jinja_path = dir.join("chat_template.jinja");
        let template = if jinja_path.is_file() {
            let src =
                std::fs::read_to_string(&jinja_path).map_err(|e| ModelError::io(&jinja_path, e))?;
            Some((src, jinja_path))
        } else {
            match cfg.get("chat_template") {
                Some(Value::String(s)) => Some((s.clone(), cfg_path.clone())),
                // A list of named templates: take "default".
                Some(Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .and_then(|t| t.get("template").and_then(|s| s.as_str()))
                    .map(|s| (s.to_string(), cfg_path.clone())),
                _ => None,
            }
        };
        Self::new(inner, template, special, tok_path)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Token ids of `text`; special tokens written in the text (e.g. `<|im_start|>`) are
    /// recognised, but none is added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| ModelError::Tokenizer {
                path: self.origin.clone(),
                cause: e.to_string(),
            })
    }

    /// Text of `ids`; with `skip_special`, special tokens are left out.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| ModelError::Tokenizer {
                path: self.origin.clone(),
                cause: e.to_string(),
            })
    }

    /// The chat template, if the model has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat.as_ref()
    }

    /// Renders `messages` with the model's chat template.
    pub fn apply_chat_template(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let chat = self
            .chat
            .as_ref()
            .ok_or_else(|| ModelError::MissingChatTemplate {
                path: self.origin.clone(),
            })?;
        chat.render(messages, add_generation_prompt)
    }

    /// Token id of a token's text, if in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Padding id: the configured pad token, else the first end-of-sequence token, else 0.
    pub fn pad_id(&self) -> u32 {
        self.special
            .pad
            .or_else(|| self.special.eos.first().copied())
            .unwrap_or(0)
    }
}
