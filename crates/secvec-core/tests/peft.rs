//! PEFT adapters: the tiny-llama adapter made by PEFT 0.21 reproduces transformers' logits with
//! the adapter active and disabled, and survives a save → load round trip bit for bit.

use burn::backend::NdArray;
use burn::tensor::{Int, Tensor, TensorData};
use safetensors::SafeTensors;
use secvec_core::CoreError;
use secvec_core::adapter::{self, load_peft_adapter, save_peft_adapter, set_adapter_active};
use secvec_models::loader::load_hf_dir;
use secvec_models::testing::*;
use secvec_models::{GenerationConfig, Llama, LoadedModel, Sampling, generate};
use serde_json::Value;

type B = NdArray<f32>;

fn base() -> LoadedModel<B> {
    load_hf_dir::<B>(&fixtures().join("tiny-llama-bf16"), &Default::default()).unwrap()
}

fn logits(model: &Llama<B>, ids: &[u32]) -> Vec<Vec<f32>> {
    let data: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    let input =
        Tensor::<B, 2, Int>::from_data(TensorData::new(data, [1, ids.len()]), &Default::default());
    let flat: Vec<f32> = model.forward(input).into_data().to_vec().unwrap();
    flat.chunks(model.vocab_size())
        .map(|c| c.to_vec())
        .collect()
}

fn check(loaded: &LoadedModel<B>, reference: &Value, what: &str) {
    for row in reference["rows"].as_array().unwrap() {
        let ids = u32s(&row["ids"]);
        let l = logits(&loaded.model, &ids);
        assert_close(
            &l[0][..16],
            &f32s(&row["logits_first_pos_first16"]),
            1e-4,
            what,
        );
        assert_close(
            &l[ids.len() - 1][..16],
            &f32s(&row["logits_last_pos_first16"]),
            1e-4,
            what,
        );
        let argmax: Vec<u32> = l
            .iter()
            .map(|r| secvec_models::sampling::argmax(r) as u32)
            .collect();
        assert_eq!(argmax, u32s(&row["argmax_per_pos"]), "{what}: argmax");
        let lse: Vec<f32> = l.iter().map(|r| logsumexp(r)).collect();
        assert_close(&lse, &f32s(&row["logsumexp_per_pos"]), 1e-4, what);
        let out = generate(
            &loaded.model,
            std::slice::from_ref(&ids),
            loaded.tokenizer.pad_id(),
            &GenerationConfig {
                max_new_tokens: 8,
                sampling: Sampling::Greedy,
                stop_tokens: loaded.tokenizer.special.eos.clone(),
            },
        )
        .unwrap();
        assert_eq!(out[0].tokens, u32s(&row["greedy_8"]), "{what}: greedy_8");
    }
}

#[test]
fn peft_adapter_reproduces_transformers_active_and_disabled() {
    let reference = read_json(&fixtures().join("tiny-llama-peft-adapter/reference.json"));
    let mut loaded = base();
    let plain_ids = u32s(&reference["adapter_disabled"]["rows"][0]["ids"]);
    let before = logits(&loaded.model, &plain_ids);

    let config = load_peft_adapter(
        &mut loaded.model,
        &fixtures().join("tiny-llama-peft-adapter"),
        "default",
    )
    .unwrap();
    assert_eq!((config.rank, config.alpha), (4, 8.0));
    assert_eq!(
        adapter::adapter_names(&loaded.model),
        vec!["default".to_string()]
    );
    check(&loaded, &reference["adapter_active"], "adapter active");

    assert_eq!(
        set_adapter_active(&mut loaded.model, "default", false).unwrap(),
        14
    );
    check(&loaded, &reference["adapter_disabled"], "adapter disabled");
    // Switching the adapter off restores the base model's logits exactly.
    assert_eq!(logits(&loaded.model, &plain_ids), before);
}

#[test]
fn peft_adapter_round_trips_bit_for_bit() {
    let src = fixtures().join("tiny-llama-peft-adapter");
    let mut loaded = base();
    let config = load_peft_adapter(&mut loaded.model, &src, "security").unwrap();
    let dir = tempfile::tempdir().unwrap();
    save_peft_adapter(
        &loaded.model,
        "security",
        &config,
        "tiny-llama-bf16",
        dir.path(),
    )
    .unwrap();

    let original = std::fs::read(src.join("adapter_model.safetensors")).unwrap();
    let saved = std::fs::read(dir.path().join("adapter_model.safetensors")).unwrap();
    let (a, b) = (
        SafeTensors::deserialize(&original).unwrap(),
        SafeTensors::deserialize(&saved).unwrap(),
    );
    let mut names_a = a.names();
    let mut names_b = b.names();
    names_a.sort();
    names_b.sort();
    assert_eq!(names_a, names_b);
    for name in names_a {
        let (ta, tb) = (a.tensor(name).unwrap(), b.tensor(name).unwrap());
        assert_eq!(ta.shape(), tb.shape(), "{name}");
        assert_eq!(ta.dtype(), tb.dtype(), "{name}");
        assert_eq!(ta.data(), tb.data(), "{name}: bytes differ");
    }
    let cfg = read_json(&dir.path().join("adapter_config.json"));
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["lora_alpha"], 8.0);
    let mut targets: Vec<String> = cfg["target_modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    targets.sort();
    assert_eq!(
        targets,
        [
            "down_proj",
            "gate_proj",
            "k_proj",
            "o_proj",
            "q_proj",
            "up_proj",
            "v_proj"
        ]
    );

    // And the saved directory loads again to the same outputs.
    let mut again = base();
    load_peft_adapter(&mut again.model, dir.path(), "security").unwrap();
    let ids = [1u32, 4093, 198, 1780, 314];
    assert_eq!(logits(&again.model, &ids), logits(&loaded.model, &ids));
}

#[test]
fn bad_peft_adapters_are_rejected_with_the_file_named() {
    let src = fixtures().join("tiny-llama-peft-adapter");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        dir.path().join("adapter_model.safetensors"),
    )
    .unwrap();
    let config: Value = read_json(&src.join("adapter_config.json"));

    // Rank in the config disagrees with the tensors.
    let mut wrong_rank = config.clone();
    wrong_rank["r"] = 8.into();
    std::fs::write(
        dir.path().join("adapter_config.json"),
        wrong_rank.to_string(),
    )
    .unwrap();
    let err = load_peft_adapter(&mut base().model, dir.path(), "x").unwrap_err();
    assert!(matches!(err, CoreError::AdapterShape { .. }), "{err}");
    assert!(
        err.to_string().contains("adapter_model.safetensors"),
        "{err}"
    );

    // DoRA is not implemented.
    let mut dora = config.clone();
    dora["use_dora"] = true.into();
    std::fs::write(dir.path().join("adapter_config.json"), dora.to_string()).unwrap();
    let err = load_peft_adapter(&mut base().model, dir.path(), "x").unwrap_err();
    assert!(
        err.to_string().contains("adapter_config.json") && err.to_string().contains("use_dora"),
        "{err}"
    );

    // A duplicate name is refused.
    let mut m = base();
    load_peft_adapter(&mut m.model, &src, "x").unwrap();
    assert!(matches!(
        load_peft_adapter(&mut m.model, &src, "x"),
        Err(CoreError::DuplicateAdapter { .. })
    ));
}

/// A full-model checkpoint written after training loads back (here and, by key names and
/// layouts, in transformers) to exactly the same model.
#[test]
fn full_model_checkpoint_round_trips() {
    let mut loaded = base();
    // Change the weights so the test cannot pass by reading the original file.
    load_peft_adapter(
        &mut loaded.model,
        &fixtures().join("tiny-llama-peft-adapter"),
        "x",
    )
    .unwrap();
    adapter::merge_adapter(&mut loaded.model, "x").unwrap();
    let dir = tempfile::tempdir().unwrap();
    secvec_core::checkpoint::save_hf_safetensors(&loaded.model, dir.path()).unwrap();
    let src = fixtures().join("tiny-llama-bf16");
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let again = load_hf_dir::<B>(dir.path(), &Default::default()).unwrap();
    let ids = [1u32, 4093, 198, 1780, 314, 260];
    assert_eq!(logits(&again.model, &ids), logits(&loaded.model, &ids));
    assert_ne!(logits(&again.model, &ids), logits(&base().model, &ids));
}
