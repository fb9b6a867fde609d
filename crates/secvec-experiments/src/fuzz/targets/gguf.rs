//! The GGUF target: the model loader run on a file, and its seeds (a synthetic one-layer file,
//! and the shipped model's file shrunk to a few tensors when it is on this machine).

use std::path::Path;

use anyhow::Result;

use secvec_models::gguf::writer::{WriteTensor, write_gguf};
use secvec_models::gguf::{GgmlType, GgufFile, MetadataValue, chat_template};
use secvec_models::gguf_source::GgufSource;

use super::{SeedPlaces, Seeds, err};

pub(super) fn run_gguf(path: &Path, _: &[u8]) -> std::result::Result<(), String> {
    let source = GgufSource::open(path).map_err(err)?;
    let _ = source.config();
    let _ = source.tokenizer();
    let file = source.file();
    let _ = chat_template(file);
    for info in file.tensor_infos() {
        let _ = file.tensor_f32(&info.name);
    }
    Ok(())
}

fn strings(items: &[&str]) -> MetadataValue {
    MetadataValue::Array(
        items
            .iter()
            .map(|s| MetadataValue::String(s.to_string()))
            .collect(),
    )
}

/// A one-layer llama with a byte-level BPE vocabulary of a few tokens and one small tensor of
/// every type the reader dequantises.
fn synthetic_gguf() -> Vec<u8> {
    let s = |v: &str| MetadataValue::String(v.into());
    let tokens = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "a",
        "b",
        "ab",
        "Ġ",
        "Ġa",
    ];
    let kvs = vec![
        ("general.architecture", s("llama")),
        ("general.alignment", MetadataValue::U32(32)),
        ("llama.embedding_length", MetadataValue::U32(32)),
        ("llama.block_count", MetadataValue::U32(1)),
        ("llama.feed_forward_length", MetadataValue::U32(64)),
        ("llama.attention.head_count", MetadataValue::U32(4)),
        ("llama.attention.head_count_kv", MetadataValue::U32(2)),
        ("llama.context_length", MetadataValue::U32(64)),
        ("llama.rope.freq_base", MetadataValue::F32(10000.0)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            MetadataValue::F32(1e-5),
        ),
        ("llama.vocab_size", MetadataValue::U32(tokens.len() as u32)),
        ("tokenizer.ggml.model", s("gpt2")),
        ("tokenizer.ggml.pre", s("smollm")),
        ("tokenizer.ggml.tokens", strings(&tokens)),
        ("tokenizer.ggml.merges", strings(&["a b", "Ġ a"])),
        (
            "tokenizer.ggml.token_type",
            MetadataValue::Array(
                [3, 3, 3, 1, 1, 1, 1, 1]
                    .into_iter()
                    .map(MetadataValue::I32)
                    .collect(),
            ),
        ),
        ("tokenizer.ggml.bos_token_id", MetadataValue::U32(1)),
        ("tokenizer.ggml.eos_token_id", MetadataValue::U32(2)),
        ("tokenizer.ggml.padding_token_id", MetadataValue::U32(0)),
        (
            "tokenizer.chat_template",
            s(
                "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}",
            ),
        ),
    ];
    let mut tensors = vec![WriteTensor {
        name: "token_embd.weight".into(),
        dims: vec![32, tokens.len() as u64],
        ggml_type: GgmlType::F32.id(),
        data: (0..32 * tokens.len())
            .flat_map(|i| (i as f32 * 0.01).to_le_bytes())
            .collect(),
    }];
    for id in 0..64 {
        let Some(ty) = GgmlType::from_id(id) else {
            continue;
        };
        if !ty.can_dequantize() {
            continue;
        }
        tensors.push(WriteTensor {
            name: format!("fuzz.{}.weight", ty.name()),
            dims: vec![ty.block_size() as u64, 1],
            ggml_type: id,
            data: (0..ty.type_size()).map(|i| (i * 37 % 251) as u8).collect(),
        });
    }
    write_gguf(&kvs, &tensors, 32)
}

/// The real file's metadata (arrays cut to their first 64 items) and its first tensors, each
/// shrunk to two blocks of its type.
fn shrunk_gguf(path: &Path) -> Result<Vec<u8>> {
    let file = GgufFile::open(path)?;
    let cut = |v: &MetadataValue| match v {
        MetadataValue::Array(items) => {
            MetadataValue::Array(items.iter().take(64).cloned().collect())
        }
        other => other.clone(),
    };
    let kvs: Vec<(String, MetadataValue)> = file
        .metadata()
        .iter()
        .map(|(k, v)| (k.clone(), cut(v)))
        .collect();
    let kv_refs: Vec<(&str, MetadataValue)> =
        kvs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let tensors: Vec<WriteTensor> = file
        .tensor_infos()
        .iter()
        .take(6)
        .map(|t| WriteTensor {
            name: t.name.clone(),
            dims: vec![t.ggml_type.block_size() as u64, 2],
            ggml_type: t.ggml_type.id(),
            data: vec![0x3c; 2 * t.ggml_type.type_size()],
        })
        .collect();
    Ok(write_gguf(&kv_refs, &tensors, file.alignment() as usize))
}

pub(super) fn gguf_seeds(places: &SeedPlaces) -> Result<Seeds> {
    let mut seeds = vec![(
        "synthetic llama (every dequantised type)".into(),
        synthetic_gguf(),
    )];
    if let Some(p) = &places.gguf {
        seeds.push((format!("{} (shrunk)", p.display()), shrunk_gguf(p)?));
    }
    Ok(seeds)
}
