//! Tiny Hugging Face checkpoints against transformers' outputs (tests/fixtures/, made by
//! shared/reference/make_hf_tiny.py): bf16 Llama with tied embeddings, f16 Qwen2 with q/k/v
//! biases and an untied head.

mod common;

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use common::*;
use secvec_models::{GenerationConfig, LoadedModel, Sampling, generate, loader::load_hf_dir};

fn logits_rows<B: Backend>(model: &LoadedModel<B>, ids: &[u32]) -> Vec<Vec<f32>> {
    let device = model.model.device();
    let data: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    let input = Tensor::<B, 2, Int>::from_data(TensorData::new(data, [1, ids.len()]), &device);
    let logits = model.model.forward(input);
    let vocab = model.model.vocab_size();
    let flat: Vec<f32> = logits.into_data().convert::<f32>().to_vec().unwrap();
    flat.chunks(vocab).map(|c| c.to_vec()).collect()
}

fn check_against_reference<B: Backend>(dir: &str, reference: &serde_json::Value) {
    let model = load_hf_dir::<B>(&fixtures().join(dir), &Default::default()).unwrap();
    let rows = reference["rows"].as_array().unwrap();
    assert!(!rows.is_empty());
    for row in rows {
        let text = row["text"].as_str().unwrap();
        let ids = model.tokenizer.encode(text).unwrap();
        assert_eq!(ids, u32s(&row["ids"]), "{dir}: token ids of {text:?}");
        let logits = logits_rows(&model, &ids);
        assert_close(
            &logits[0][..16],
            &f32s(&row["logits_first_pos_first16"]),
            1e-4,
            &format!("{dir}: first-position logits of {text:?}"),
        );
        assert_close(
            &logits[ids.len() - 1][..16],
            &f32s(&row["logits_last_pos_first16"]),
            1e-4,
            &format!("{dir}: last-position logits of {text:?}"),
        );
        let argmax: Vec<u32> = logits
            .iter()
            .map(|r| secvec_models::sampling::argmax(r) as u32)
            .collect();
        assert_eq!(
            argmax,
            u32s(&row["argmax_per_pos"]),
            "{dir}: argmax of {text:?}"
        );
        let lse: Vec<f32> = logits.iter().map(|r| logsumexp(r)).collect();
        assert_close(
            &lse,
            &f32s(&row["logsumexp_per_pos"]),
            1e-4,
            &format!("{dir}: logsumexp of {text:?}"),
        );
        let greedy = generate(
            &model.model,
            std::slice::from_ref(&ids),
            model.tokenizer.pad_id(),
            &GenerationConfig {
                max_new_tokens: 8,
                sampling: Sampling::Greedy,
                stop_tokens: model.tokenizer.special.eos.clone(),
            },
        )
        .unwrap();
        assert_eq!(
            greedy[0].tokens,
            u32s(&row["greedy_8"]),
            "{dir}: greedy_8 of {text:?}"
        );
    }
}

#[test]
fn tiny_llama_bf16_matches_transformers() {
    let reference = read_json(&fixtures().join("tiny-llama-bf16/reference.json"));
    check_against_reference::<B>("tiny-llama-bf16", &reference);
}

/// The same references on the flex CPU backend (the CLI's default).
#[test]
fn flex_backend_matches_transformers() {
    for dir in ["tiny-llama-bf16", "tiny-qwen2-f16"] {
        let reference = read_json(&fixtures().join(dir).join("reference.json"));
        check_against_reference::<burn::backend::Flex>(dir, &reference);
    }
}

#[test]
fn tiny_qwen2_f16_with_biases_matches_transformers() {
    let reference = read_json(&fixtures().join("tiny-qwen2-f16/reference.json"));
    check_against_reference::<B>("tiny-qwen2-f16", &reference);
    let model = load_hf_dir::<B>(&fixtures().join("tiny-qwen2-f16"), &Default::default()).unwrap();
    assert!(model.config.attention_bias && !model.config.tie_word_embeddings);
    assert!(model.model.lm_head.is_some());
    assert!(model.model.layers[0].self_attn.q_proj.bias.is_some());
    assert!(model.model.layers[0].self_attn.o_proj.bias.is_none());
}

/// Left-padded batched generation gives the same tokens as each prompt alone.
#[test]
fn batched_generation_with_left_padding_matches_single_rows() {
    let model = load_hf_dir::<B>(&fixtures().join("tiny-qwen2-f16"), &Default::default()).unwrap();
    let prompts: Vec<Vec<u32>> = [
        "Hi",
        "The quick brown fox jumps over",
        "What is 2+2? Tell me.",
    ]
    .iter()
    .map(|t| model.tokenizer.encode(t).unwrap())
    .collect();
    let cfg = GenerationConfig {
        max_new_tokens: 6,
        sampling: Sampling::Greedy,
        stop_tokens: vec![],
    };
    let batched = generate(&model.model, &prompts, model.tokenizer.pad_id(), &cfg).unwrap();
    for (p, b) in prompts.iter().zip(&batched) {
        let single = generate(
            &model.model,
            std::slice::from_ref(p),
            model.tokenizer.pad_id(),
            &cfg,
        )
        .unwrap();
        assert_eq!(single[0].tokens, b.tokens);
        assert_eq!(b.tokens.len(), 6);
    }
    // Padded logits equal unpadded ones at real positions.
    let device = Default::default();
    let short = &prompts[0];
    let long = prompts[1].len();
    let mut row: Vec<i64> = vec![model.tokenizer.pad_id() as i64; long - short.len()];
    row.extend(short.iter().map(|&t| t as i64));
    let valid: Vec<bool> = (0..long).map(|i| i >= long - short.len()).collect();
    let padded = model
        .model
        .forward_padded(
            Tensor::<B, 2, Int>::from_data(TensorData::new(row, [1, long]), &device),
            &[valid],
        )
        .narrow(1, long - 1, 1)
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    let plain = logits_rows(&model, short);
    assert_close(
        &padded,
        plain.last().unwrap(),
        1e-4,
        "left-padded last logits",
    );
}

#[test]
fn chat_template_and_special_tokens_from_tokenizer_config() {
    let model = load_hf_dir::<B>(&fixtures().join("tiny-llama-bf16"), &Default::default()).unwrap();
    assert_eq!(model.tokenizer.special.eos, vec![2]);
    assert_eq!(model.tokenizer.pad_id(), 2);
    let text = model
        .tokenizer
        .apply_chat_template(
            &[secvec_models::Message::user(
                "What is the capital of France?",
            )],
            true,
        )
        .unwrap();
    assert!(text.ends_with("<|im_start|>assistant\n"), "{text}");
    assert!(text.starts_with("<|im_start|>system\n"), "{text}");
}

/// A checkpoint split into shards with `model.safetensors.index.json` loads to the same model.
#[test]
fn sharded_safetensors_checkpoint_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures().join("tiny-llama-bf16");
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "chat_template.jinja",
    ] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors = st.tensors();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let half = tensors.len() / 2;
    let mut weight_map = serde_json::Map::new();
    for (i, part) in [&tensors[..half], &tensors[half..]].into_iter().enumerate() {
        let name = format!("model-{:05}-of-00002.safetensors", i + 1);
        for (k, _) in part.iter() {
            weight_map.insert(k.clone(), name.clone().into());
        }
        let out =
            safetensors::serialize(part.iter().map(|(k, v)| (k.clone(), v.clone())), None).unwrap();
        std::fs::write(tmp.path().join(&name), out).unwrap();
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();

    let sharded = load_hf_dir::<B>(tmp.path(), &Default::default()).unwrap();
    let single = load_hf_dir::<B>(&src, &Default::default()).unwrap();
    let ids = [1u32, 4093, 198, 1780, 314, 260];
    assert_eq!(logits_rows(&sharded, &ids), logits_rows(&single, &ids));
}
