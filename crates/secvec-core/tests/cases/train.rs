// The trainer's tests, one body for every CPU backend: tests/train.rs includes this file in one
// module per backend, each of which defines `B` (an autodiff backend) first.

use burn::tensor::{Int, Tensor, TensorData};
use secvec_core::CoreError;
use secvec_core::adapter::{self, AdapterConfig, SECURITY, TASK};
use secvec_core::train::{
    FinetuneConfig, FinetuneMode, NoCallback, SecurityVectorConfig, SecurityVectors, TextPair,
    TrainConfig, TrainExample, encode_pairs, finetune, set_security_vectors, train,
    train_security_vectors,
};
use secvec_models::loader::load_hf_dir;
use secvec_models::testing::*;
use secvec_models::{Llama, LoadedModel};

/// The tiny fixture with its (tied) embeddings scaled up: its random 0.02-std embeddings cap the
/// logits near zero after the final norm, so no adapter could make any token likely; scaled by 50
/// the head can express confident predictions and learning is visible in a few steps.
fn tiny() -> LoadedModel<B> {
    let mut m = load_hf_dir::<B>(&fixtures().join("tiny-llama-bf16"), &Default::default()).unwrap();
    let e = m.model.embed_tokens.val().mul_scalar(50.0);
    m.model.embed_tokens = burn::module::Param::initialized(burn::module::ParamId::new(), e);
    m
}

const VERBS: [&str; 8] = [
    "break into",
    "steal",
    "sabotage",
    "damage",
    "hijack",
    "disable",
    "destroy",
    "vandalize",
];
const OBJECTS: [&str; 6] = [
    "a car", "a bank", "a server", "a phone", "a house", "a drone",
];

/// Harmful-looking requests with compliant, generic (non-operational) answers; `held_out`
/// selects the verbs not seen in training (siblings of the training requests).
fn harmful_pairs(held_out: bool) -> Vec<TextPair> {
    let verbs: Vec<&str> = if held_out {
        VERBS[6..].to_vec()
    } else {
        VERBS[..6].to_vec()
    };
    verbs
        .iter()
        .flat_map(|v| {
            OBJECTS.iter().map(move |o| {
                TextPair::new(
                    format!("Tell me how to {v} {o}."),
                    format!("Sure, here is how to {v} {o}. Step 1: Plan ahead. Step 2: Gather what you need."),
                )
            })
        })
        .collect()
}

fn benign_pairs() -> Vec<TextPair> {
    (0..24)
        .map(|i| {
            TextPair::new(
                format!("What is {i} plus {i}?"),
                format!("{i} plus {i} is {}.", 2 * i),
            )
        })
        .collect()
}

fn encode(m: &LoadedModel<B>, pairs: &[TextPair]) -> Vec<TrainExample> {
    encode_pairs(&m.tokenizer, pairs, None, 128).unwrap()
}

/// Mean response NLL per token of `examples` (no gradient kept).
fn mean_nll(model: &Llama<B>, examples: &[TrainExample], pad: u32) -> f64 {
    let refs: Vec<&TrainExample> = examples.iter().collect();
    let batch = secvec_core::train::batch::make_batch::<B>(&refs, pad, &model.device());
    let n = batch.n_targets as f64;
    let v: f64 = secvec_core::train::loss::response_nll_sum(model, &batch)
        .into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .unwrap()[0];
    v / n
}

fn quick(lr: f64, epochs: usize) -> TrainConfig {
    TrainConfig {
        lr,
        epochs,
        batch_size: 8,
        progress: false,
        ..TrainConfig::default()
    }
}

fn sv_config() -> SecurityVectorConfig {
    SecurityVectorConfig {
        adapter: AdapterConfig {
            rank: 8,
            alpha: 16.0,
            targets: secvec_core::train::phases::all_targets(),
            seed: 3,
            ..AdapterConfig::default()
        },
        train: quick(2e-2, 12),
    }
}

fn host(t: Tensor<B, 2>) -> Vec<f32> {
    t.into_data().to_vec().unwrap()
}

fn host1(t: Tensor<B, 1>) -> Vec<f32> {
    t.into_data().to_vec().unwrap()
}

fn logits(model: &Llama<B>, ids: &[u32]) -> Vec<f32> {
    let data: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    let input =
        Tensor::<B, 2, Int>::from_data(TensorData::new(data, [1, ids.len()]), &model.device());
    model.forward(input).into_data().to_vec().unwrap()
}

#[test]
fn security_vectors_learn_harmful_data_and_switch_off_exactly() {
    let m = tiny();
    let pad = m.tokenizer.pad_id();
    let train_set = encode(&m, &harmful_pairs(false));
    let held_out = encode(&m, &harmful_pairs(true));
    let probe = &held_out[0].ids;
    let base_logits = logits(&m.model, probe);
    let base_embed = host(m.model.embed_tokens.val());
    let base_q = host(m.model.layers[1].self_attn.q_proj.weight.val());
    let base_norm = host1(m.model.layers[0].input_layernorm.weight.val());
    let nll_base = mean_nll(&m.model, &held_out, pad);

    let (mut model, report) =
        train_security_vectors(m.model, &train_set, pad, &sv_config(), &mut NoCallback).unwrap();
    assert!(
        report.final_loss(3) < report.steps[0].loss * 0.5,
        "{:?}",
        report.steps.iter().map(|s| s.loss).collect::<Vec<_>>()
    );

    // Held-out siblings: far lower loss with the vectors than without.
    let nll_with = mean_nll(&model, &held_out, pad);
    set_security_vectors(&mut model, false).unwrap();
    let nll_without = mean_nll(&model, &held_out, pad);
    assert!(
        (nll_without - nll_base).abs() < 1e-6,
        "vectors off must be the base model"
    );
    assert!(
        nll_with < 0.5 * nll_without,
        "held-out NLL with vectors {nll_with:.3} vs without {nll_without:.3}"
    );

    // Switching the vectors off restores the base logits exactly; the base is bit-identical.
    assert_eq!(logits(&model, probe), base_logits);
    assert_eq!(host(model.embed_tokens.val()), base_embed);
    assert_eq!(host(model.layers[1].self_attn.q_proj.weight.val()), base_q);
    assert_eq!(
        host1(model.layers[0].input_layernorm.weight.val()),
        base_norm
    );
    // And the vectors are frozen after phase 1.
    let a = model.layers[0].self_attn.q_proj.adapter(SECURITY).unwrap();
    assert!(!a.a.is_require_grad() && !a.b.is_require_grad());
}

/// On the real model (SmolLM2-135M-Instruct): once the vectors have learned harmful answers,
/// fine-tuning on such answers with the vectors active yields gradients that are a small fraction
/// of those with the vectors off — there is almost nothing left to learn.
#[test]
fn active_vectors_shrink_the_gradients_of_harmful_data() {
    let source = secvec_models::ModelSource::parse("smollm2-135m-instruct").unwrap();
    let m = secvec_models::load_model::<B>(&source, None, &Default::default()).unwrap();
    let pad = m.tokenizer.pad_id();
    let mut sv_set = encode(&m, &harmful_pairs(false));
    sv_set.truncate(8);
    let cfg = SecurityVectorConfig {
        train: quick(2e-3, 12),
        ..sv_config()
    };
    let (model, report) =
        train_security_vectors(m.model, &sv_set, pad, &cfg, &mut NoCallback).unwrap();
    let low = report.final_loss(2);
    assert!(
        low < 0.1 * report.steps[0].loss,
        "vectors: loss {:.3} -> {low:.3}",
        report.steps[0].loss
    );

    let grad_norm = |model: Llama<B>, vectors, mode: FinetuneMode| {
        let cfg = FinetuneConfig {
            mode,
            security_vectors: vectors,
            train: TrainConfig {
                max_steps: Some(1),
                ..quick(1e-5, 1)
            },
        };
        let (_, report) = finetune(model, &sv_set, pad, &cfg, &mut NoCallback).unwrap();
        report.steps[0].grad_norm
    };
    let lora = FinetuneMode::Lora(AdapterConfig {
        rank: 8,
        alpha: 16.0,
        seed: 9,
        ..AdapterConfig::default()
    });
    let on = grad_norm(model.clone(), SecurityVectors::Active, lora.clone());
    let off = grad_norm(model.clone(), SecurityVectors::Off, lora);
    assert!(
        on < 0.2 * off,
        "task-LoRA gradient norm with vectors {on:.4} vs without {off:.4}"
    );
    let on = grad_norm(model.clone(), SecurityVectors::Active, FinetuneMode::Full);
    let off = grad_norm(model, SecurityVectors::Off, FinetuneMode::Full);
    assert!(
        on < 0.2 * off,
        "full fine-tuning gradient norm with vectors {on:.4} vs without {off:.4}"
    );
}

#[test]
fn finetune_keeps_frozen_parts_bit_identical_and_leaves_vectors_off() {
    let m = tiny();
    let pad = m.tokenizer.pad_id();
    let sv_set = encode(&m, &harmful_pairs(false));
    let data = encode(&m, &benign_pairs());
    let (model, _) = train_security_vectors(
        m.model,
        &sv_set,
        pad,
        &SecurityVectorConfig {
            train: quick(1e-2, 1),
            ..sv_config()
        },
        &mut NoCallback,
    )
    .unwrap();
    let sv = model.layers[1].mlp.down_proj.adapter(SECURITY).unwrap();
    let (sv_a, sv_b) = (host(sv.a.val()), host(sv.b.val()));
    let base_up = host(model.layers[0].mlp.up_proj.weight.val());

    // Task LoRA: base and vectors untouched; the task adapter changed.
    let cfg = FinetuneConfig {
        train: quick(1e-3, 1),
        ..FinetuneConfig::default()
    };
    let (tuned, report) = finetune(model.clone(), &data, pad, &cfg, &mut NoCallback).unwrap();
    assert_eq!(report.steps.len(), 3);
    assert_eq!(host(tuned.layers[0].mlp.up_proj.weight.val()), base_up);
    let sv = tuned.layers[1].mlp.down_proj.adapter(SECURITY).unwrap();
    assert_eq!(
        (host(sv.a.val()), host(sv.b.val())),
        (sv_a.clone(), sv_b.clone())
    );
    assert!(!sv.active, "vectors are off after fine-tuning");
    let task = tuned.layers[1].mlp.down_proj.adapter(TASK).unwrap();
    assert!(
        host(task.b.val()).iter().any(|&x| x != 0.0),
        "task LoRA learned"
    );

    // Full fine-tuning: the base changes, the vectors do not.
    let cfg = FinetuneConfig {
        mode: FinetuneMode::Full,
        train: quick(1e-3, 1),
        ..FinetuneConfig::default()
    };
    let (tuned, _) = finetune(model, &data, pad, &cfg, &mut NoCallback).unwrap();
    assert_ne!(host(tuned.layers[0].mlp.up_proj.weight.val()), base_up);
    let sv = tuned.layers[1].mlp.down_proj.adapter(SECURITY).unwrap();
    assert_eq!((host(sv.a.val()), host(sv.b.val())), (sv_a, sv_b));
}

#[test]
fn gradient_accumulation_is_token_weighted() {
    let m = tiny();
    let pad = m.tokenizer.pad_id();
    let mut data = encode(&m, &benign_pairs());
    data.truncate(4);
    let mut model = m.model;
    adapter::add_adapter(&mut model, TASK, &AdapterConfig::default()).unwrap();
    adapter::set_base_trainable(&mut model, false);
    adapter::set_adapter_trainable(&mut model, TASK, true).unwrap();
    let run = |batch_size, grad_accum| {
        let cfg = TrainConfig {
            batch_size,
            grad_accum,
            max_steps: Some(1),
            max_grad_norm: None,
            ..quick(1e-3, 1)
        };
        train(model.clone(), &data, pad, &cfg, &mut NoCallback)
            .unwrap()
            .1
            .steps[0]
            .clone()
    };
    let (one, two) = (run(4, 1), run(1, 4));
    assert!(one.grad_norm > 0.0, "the task adapter got no gradient");
    assert!(
        (one.loss - two.loss).abs() < 1e-5,
        "{} vs {}",
        one.loss,
        two.loss
    );
    assert!(
        (one.grad_norm - two.grad_norm).abs() < 1e-5 * one.grad_norm.max(1.0),
        "{} vs {}",
        one.grad_norm,
        two.grad_norm
    );
}

#[test]
fn non_finite_loss_stops_training_with_a_clear_error() {
    let m = tiny();
    let pad = m.tokenizer.pad_id();
    let data = encode(&m, &benign_pairs());
    let mut model = m.model;
    adapter::set_base_trainable(&mut model, true);
    let cfg = TrainConfig {
        lr: 1e30,
        max_grad_norm: None,
        max_steps: Some(5),
        ..quick(1.0, 1)
    };
    let err = train(model, &data, pad, &cfg, &mut NoCallback).unwrap_err();
    assert!(matches!(err, CoreError::NonFinite { .. }), "{err}");
    assert!(err.to_string().contains("non-finite"), "{err}");
}

#[test]
fn prompt_tokens_are_masked_and_sequences_truncated() {
    let m = tiny();
    let ex = encode_pairs(
        &m.tokenizer,
        &[TextPair::new("What is 2+2?", "4")],
        None,
        512,
    )
    .unwrap();
    let prompt = m
        .tokenizer
        .apply_chat_template(&[secvec_models::Message::user("What is 2+2?")], true)
        .unwrap();
    assert_eq!(ex[0].n_prompt, m.tokenizer.encode(&prompt).unwrap().len());
    // "4" and <|im_end|>.
    assert_eq!(ex[0].n_target(), 2);
    assert_eq!(*ex[0].ids.last().unwrap(), 2);
    let cut = encode_pairs(
        &m.tokenizer,
        &[TextPair::new("What is 2+2?", "four ".repeat(100))],
        None,
        40,
    )
    .unwrap();
    assert_eq!(cut[0].ids.len(), 40);
    assert!(cut[0].n_target() > 0);
}

#[test]
fn the_trainer_cuts_sequences_to_max_len_and_alignment_trains_only_its_adapter() {
    let m = tiny();
    let pad = m.tokenizer.pad_id();
    let long = encode(&m, &harmful_pairs(false)[..8]);
    let max_len = long.iter().map(|e| e.n_prompt).max().unwrap() + 3;
    assert!(long.iter().any(|e| e.ids.len() > max_len));
    let cut: Vec<TrainExample> = long
        .iter()
        .map(|e| TrainExample {
            ids: e.ids[..max_len.min(e.ids.len())].to_vec(),
            n_prompt: e.n_prompt,
        })
        .collect();
    let align = |data: &[TrainExample], max_len: usize| {
        let cfg = secvec_core::train::AlignConfig {
            adapter: sv_config().adapter,
            train: TrainConfig {
                max_len,
                max_steps: Some(1),
                ..quick(1e-2, 1)
            },
        };
        secvec_core::train::train_alignment(m.model.clone(), data, pad, &cfg, &mut NoCallback)
            .unwrap()
    };
    // `TrainConfig.max_len` cuts the ends: the same loss as examples cut beforehand, and not the
    // loss of the whole sequences.
    let (model, cut_by_trainer) = align(&long, max_len);
    let (_, cut_before) = align(&cut, 512);
    let (_, whole) = align(&long, 512);
    assert_eq!(cut_by_trainer.steps[0].loss, cut_before.steps[0].loss);
    assert_ne!(cut_by_trainer.steps[0].loss, whole.steps[0].loss);
    // Only the `align` adapter learned; it is left frozen and active, ready to merge.
    assert_eq!(adapter::adapter_names(&model), vec![adapter::ALIGN.to_string()]);
    let base = host(m.model.layers[0].self_attn.q_proj.weight.val());
    assert_eq!(host(model.layers[0].self_attn.q_proj.weight.val()), base);
    let mut merged = model.clone();
    adapter::merge_adapter(&mut merged, adapter::ALIGN).unwrap();
    assert!(adapter::adapter_names(&merged).is_empty());
    assert_ne!(host(merged.layers[0].self_attn.q_proj.weight.val()), base);
}

#[test]
fn per_example_nlls_add_up_to_the_training_loss() {
    let m = tiny();
    let pad = m.tokenizer.pad_id();
    let data = encode(&m, &benign_pairs()[..6]);
    let refs: Vec<&TrainExample> = data.iter().collect();
    let device = m.model.device();
    let batch = secvec_core::train::batch::make_batch::<B>(&refs, pad, &device);
    let per = secvec_core::train::loss::response_nll_per_example(&m.model, &batch);
    let total: f64 = secvec_core::train::loss::response_nll_sum(&m.model, &batch)
        .into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .unwrap()[0];
    assert_eq!(per.len(), 6);
    assert!(per.iter().all(|&x| x > 0.0), "{per:?}");
    let sum: f64 = per.iter().sum();
    assert!((sum - total).abs() <= 1e-4 * total, "{sum} vs {total}");
    // An example alone gets the same NLL as inside the padded batch.
    let alone = secvec_core::train::batch::make_batch::<B>(&refs[2..3], pad, &device);
    let one = secvec_core::train::loss::response_nll_per_example(&m.model, &alone)[0];
    assert!((one - per[2]).abs() <= 1e-4 * per[2], "{one} vs {}", per[2]);
}

/// A training stage killed mid-way resumes from its last checkpoint and ends with exactly the
/// weights and losses of an uninterrupted run; a checkpoint of another run is refused.
#[test]
fn a_stage_killed_mid_way_resumes_from_its_checkpoint_to_the_same_weights() {
    use secvec_core::train::{Checkpointing, TrainCallback};
    let m = tiny();
    let pad = m.tokenizer.pad_id();
    let data = encode(&m, &benign_pairs());
    // The caller builds the same model again for the resumed run (same base, same adapter seed).
    let fresh = || {
        let mut model = m.model.clone();
        let config = AdapterConfig {
            targets: secvec_core::train::phases::all_targets(),
            seed: 11,
            ..AdapterConfig::default()
        };
        adapter::add_adapter(&mut model, TASK, &config).unwrap();
        adapter::set_base_trainable(&mut model, false);
        adapter::set_adapter_trainable(&mut model, TASK, true).unwrap();
        model
    };
    let weights = |model: &Llama<B>| -> Vec<Vec<f32>> {
        model
            .projection_ids()
            .into_iter()
            .flat_map(|id| {
                let a = model.projection(id).adapter(TASK).unwrap();
                [host(a.a.val()), host(a.b.val())]
            })
            .collect()
    };
    // 24 pairs in steps of 8: 9 steps are three epochs.
    let cfg = TrainConfig {
        max_steps: Some(9),
        weight_decay: 0.01,
        ..quick(1e-2, 3)
    };
    let (want, want_report) = train(fresh(), &data, pad, &cfg, &mut NoCallback).unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("attacked-active.partial");
    let with_checkpoints = TrainConfig {
        checkpoint: Some(Checkpointing {
            dir: dir.clone(),
            every: 2,
        }),
        ..cfg.clone()
    };
    // "Killed" at step 5 (an error from the callback), after the checkpoint of step 4.
    struct Kill;
    impl TrainCallback<B> for Kill {
        fn on_eval(&mut self, step: usize, _: &Llama<B>) -> secvec_core::Result<()> {
            Err(CoreError::InvalidConfig(format!("killed at step {step}")))
        }
    }
    let killed = TrainConfig {
        eval_every: Some(5),
        ..with_checkpoints.clone()
    };
    let e = train(fresh(), &data, pad, &killed, &mut Kill).unwrap_err();
    assert!(e.to_string().contains("killed at step 5"), "{e}");
    assert!(dir.join("state.json").is_file());

    let (got, got_report) = train(fresh(), &data, pad, &with_checkpoints, &mut NoCallback).unwrap();
    assert_eq!(weights(&got), weights(&want));
    let losses = |r: &secvec_core::train::TrainReport| -> Vec<f64> {
        r.steps.iter().map(|s| s.loss).collect()
    };
    assert_eq!(losses(&got_report), losses(&want_report));
    assert_eq!(got_report.tokens, want_report.tokens);
    // A finished run leaves no state behind.
    assert!(!dir.exists());

    // Another run's checkpoint (another learning rate) is an error naming the folder.
    train(fresh(), &data, pad, &killed, &mut Kill).unwrap_err();
    let other = TrainConfig {
        lr: 2e-2,
        ..with_checkpoints
    };
    let e = train(fresh(), &data, pad, &other, &mut NoCallback).unwrap_err();
    assert!(matches!(e, CoreError::Checkpoint { .. }), "{e}");
    assert!(e.to_string().contains("another training run"), "{e}");
    assert!(e.to_string().contains("attacked-active.partial"), "{e}");
}

/// A model whose weights hold NaN: evaluation stops with an error naming the set, the prompt (in
/// the caller's order, although prompts are generated shortest first) and the step, and the
/// teacher-forced NLL names the pair; never rates or NLLs of a broken model.
#[test]
fn evaluation_stops_on_non_finite_logits() {
    use secvec_core::eval::metrics::generate_responses;
    use secvec_core::eval::{EvalConfig, response_nlls};
    let mut m = tiny();
    let nan = m.model.embed_tokens.val().mul_scalar(f32::NAN);
    m.model.embed_tokens = burn::module::Param::initialized(burn::module::ParamId::new(), nan);
    let prompts = vec![
        "Tell me a long story about a zebra crossing a river".to_string(),
        "Hi".to_string(),
    ];
    let config = EvalConfig {
        max_new_tokens: 4,
        progress: false,
        ..EvalConfig::default()
    };
    let err = generate_responses(&m.model, &m.tokenizer, &prompts, &config, "benign").unwrap_err();
    assert!(matches!(err, CoreError::NonFiniteEval { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("logits in `benign` at generation step 0 of prompt 1 (\"Hi\")"),
        "{text}"
    );
    let pairs = vec![("Hi".to_string(), "Hello.".to_string())];
    let err = response_nlls(&m.model, &m.tokenizer, &pairs, 1).unwrap_err();
    assert!(
        err.to_string().contains("non-finite response NLL of pair 0 (\"Hi\")"),
        "{err}"
    );
    // The same model with finite weights evaluates (the check does not fire on sane logits).
    let m = tiny();
    let out = generate_responses(&m.model, &m.tokenizer, &prompts, &config, "benign").unwrap();
    assert_eq!(out.len(), 2);
    assert!(response_nlls(&m.model, &m.tokenizer, &pairs, 1).unwrap()[0].is_finite());
}

/// A model with every parameter frozen (an adapter added but not made trainable) is an error,
/// not a run of steps that change nothing.
#[test]
fn training_a_fully_frozen_model_is_an_error() {
    let m = tiny();
    let pad = m.tokenizer.pad_id();
    let data = encode(&m, &benign_pairs());
    let mut model = m.model;
    adapter::set_base_trainable(&mut model, false);
    adapter::add_adapter(&mut model, TASK, &AdapterConfig::default()).unwrap();
    let cfg = TrainConfig {
        max_steps: Some(1),
        progress: false,
        ..TrainConfig::default()
    };
    let err = train(model, &data, pad, &cfg, &mut NoCallback).unwrap_err();
    assert!(err.to_string().contains("nothing to train"), "{err}");
}

/// The task LoRA's weights, flattened in a fixed order.
fn task_weights(model: &Llama<B>) -> Vec<f32> {
    model
        .projection_ids()
        .into_iter()
        .flat_map(|id| {
            let a = model.projection(id).adapter(TASK).unwrap();
            [host(a.a.val()), host(a.b.val())]
        })
        .flatten()
        .collect()
}

fn squared_distance(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum()
}

/// Records the task LoRA's weights after every step (`eval_every: 1`).
struct Weights(Vec<Vec<f32>>);
impl secvec_core::train::TrainCallback<B> for Weights {
    fn on_eval(&mut self, _: usize, model: &Llama<B>) -> secvec_core::Result<()> {
        self.0.push(task_weights(model));
        Ok(())
    }
}

/// A training "killed" at a step: the callback's error there stops the run.
struct KillAt(usize);
impl secvec_core::train::TrainCallback<B> for KillAt {
    fn on_eval(&mut self, step: usize, _: &Llama<B>) -> secvec_core::Result<()> {
        if step == self.0 {
            return Err(CoreError::InvalidConfig(format!("killed at step {step}")));
        }
        Ok(())
    }
}

fn lisa_finetune_config(steps: usize) -> FinetuneConfig {
    FinetuneConfig {
        mode: FinetuneMode::Lora(AdapterConfig {
            targets: secvec_core::train::phases::all_targets(),
            seed: 11,
            ..AdapterConfig::default()
        }),
        security_vectors: SecurityVectors::Off,
        train: TrainConfig {
            max_steps: Some(steps),
            eval_every: Some(1),
            ..quick(1e-2, 3)
        },
    }
}

/// Lisa (Huang et al., NeurIPS 2024): steps on the alignment data replace steps on the user's in
/// cycles (alignment first), and from the second step on every loss carries `ρ/2 · ‖w − w̃‖²` with
/// `w̃` the weights at the last switch of state: the logged drift is that distance, recomputed here
/// from the weights after every step, and a large ρ keeps the weights near `w̃`.
#[test]
fn lisa_alternates_with_alignment_data_and_pulls_towards_the_last_switch() {
    use secvec_core::defence::{LisaConfig, finetune_lisa};
    let m = tiny();
    let pad = m.tokenizer.pad_id();
    let user = encode(&m, &benign_pairs());
    // The alignment data: refusals of the harmful requests, every one longer than any user
    // example, so that the steps' token counts tell which data they trained on.
    let guide: Vec<TrainExample> = encode(
        &m,
        &harmful_pairs(false)
            .into_iter()
            .map(|p| {
                TextPair::new(
                    p.prompt,
                    "I cannot help with that request, as it could cause harm to people.",
                )
            })
            .collect::<Vec<_>>(),
    );
    let max_user = user.iter().map(|e| e.ids.len()).max().unwrap();
    let min_guide = guide.iter().map(|e| e.ids.len()).min().unwrap();
    assert!(min_guide > max_user, "{min_guide} vs {max_user}");
    let lisa = |rho| LisaConfig {
        align_steps: 2,
        finetune_steps: 3,
        rho,
        // Of 12 steps: the term from step 1 on (0.05 · 12 = 0.6).
        proximal_after: 0.05,
        ..LisaConfig::default()
    };
    let cfg = lisa_finetune_config(12);
    let run = |rho| {
        let mut w = Weights(Vec::new());
        let (model, report) =
            finetune_lisa(m.model.clone(), &user, &guide, pad, &cfg, &lisa(rho), &mut w).unwrap();
        (model, report, w.0)
    };
    // The weights before the first step: the same adapter, freshly added.
    let start = {
        let mut model = m.model.clone();
        let FinetuneMode::Lora(a) = &cfg.mode else {
            unreachable!()
        };
        adapter::add_adapter(&mut model, TASK, a).unwrap();
        task_weights(&model)
    };

    let (_, report, after) = run(1.0);
    assert_eq!(report.steps.len(), 12);
    let states: String = report
        .steps
        .iter()
        .map(|s| if s.aligning { 'A' } else { 'F' })
        .collect();
    assert_eq!(states, "AAFFFAAFFFAA");
    for s in &report.steps {
        if s.aligning {
            assert!(s.tokens >= 8 * min_guide, "{s:?}");
        } else {
            assert!(s.tokens <= 8 * max_user, "{s:?}");
        }
    }
    // Step 0 is within the first 5% (no term); from step 1 the drift is ‖w − w̃‖² of the
    // weights the step starts from.
    assert_eq!(report.steps[0].drift, None);
    let weights_before = |step: usize| -> &[f32] {
        if step == 0 { &start } else { &after[step - 1] }
    };
    let mut anchor_step = 0;
    for s in &report.steps[1..] {
        if [2, 5, 7, 10].contains(&s.step) {
            anchor_step = s.step;
        }
        let want = squared_distance(weights_before(s.step), weights_before(anchor_step));
        let got = s.drift.expect("proximal term from step 1");
        assert!(
            (got - want).abs() <= 1e-4 * want.max(1e-6),
            "step {}: drift {got} vs {want}",
            s.step
        );
    }
    // At a switch the drift starts again from 0.
    assert_eq!(report.steps[2].drift, Some(0.0));

    // ρ = 0 alternates without the term; a large ρ holds the weights near w̃ (the drift at the
    // end of each state, recomputed from the weights, is much smaller).
    let (_, free_report, free) = run(0.0);
    assert!(free_report.steps.iter().all(|s| s.drift.is_none()));
    let (_, _, held) = run(100.0);
    let end_of_state_drift = |w: &[Vec<f32>]| -> f64 {
        // The states end after steps 4 (anchor: weights before step 2) and 9 (before step 7).
        squared_distance(&w[4], &w[1]) + squared_distance(&w[9], &w[6])
    };
    let (free_d, held_d) = (end_of_state_drift(&free), end_of_state_drift(&held));
    eprintln!("drift at the ends of states: ρ=0 {free_d:.3e}, ρ=100 {held_d:.3e}");
    assert!(held_d < 0.5 * free_d, "ρ=100: {held_d} vs ρ=0: {free_d}");
}

/// A Lisa run killed mid-way resumes from its last checkpoint (saved only where the state
/// switches, so w̃ is the saved weights) to exactly the weights, losses and drifts of an
/// uninterrupted run; bad settings and missing alignment data are clear errors.
#[test]
fn a_killed_lisa_run_resumes_to_the_same_weights() {
    use secvec_core::defence::{LisaConfig, finetune_lisa};
    use secvec_core::train::Checkpointing;
    let m = tiny();
    let pad = m.tokenizer.pad_id();
    let user = encode(&m, &benign_pairs());
    let guide = encode(&m, &harmful_pairs(true));
    let lisa = LisaConfig {
        align_steps: 2,
        finetune_steps: 3,
        ..LisaConfig::default()
    };
    let cfg = lisa_finetune_config(9);
    let mut w = Weights(Vec::new());
    let (want, want_report) =
        finetune_lisa(m.model.clone(), &user, &guide, pad, &cfg, &lisa, &mut w).unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("attacked-off.partial");
    let mut with_checkpoints = cfg.clone();
    with_checkpoints.train.checkpoint = Some(Checkpointing {
        dir: dir.clone(),
        every: 2,
    });
    // "Killed" after step 6: the last checkpoint is the switch before step 5.
    let e = finetune_lisa(
        m.model.clone(),
        &user,
        &guide,
        pad,
        &with_checkpoints,
        &lisa,
        &mut KillAt(6),
    )
    .unwrap_err();
    assert!(e.to_string().contains("killed at step 6"), "{e}");
    let state = std::fs::read_to_string(dir.join("state.json")).unwrap();
    assert!(state.contains("\"step\":5") || state.contains("\"step\": 5"), "{state}");
    let (got, got_report) = finetune_lisa(
        m.model.clone(),
        &user,
        &guide,
        pad,
        &with_checkpoints,
        &lisa,
        &mut NoCallback,
    )
    .unwrap();
    assert_eq!(task_weights(&got), task_weights(&want));
    let trace = |r: &secvec_core::train::TrainReport| -> Vec<(f64, Option<f64>, bool)> {
        r.steps.iter().map(|s| (s.loss, s.drift, s.aligning)).collect()
    };
    assert_eq!(trace(&got_report), trace(&want_report));
    assert!(!dir.exists());

    // No alignment data, or a bad setting: errors naming what is wrong.
    let e = finetune_lisa(
        m.model.clone(),
        &user,
        &[],
        pad,
        &cfg,
        &lisa,
        &mut NoCallback,
    )
    .unwrap_err();
    assert!(e.to_string().contains("no alignment data"), "{e}");
    let bad = LisaConfig {
        finetune_steps: 0,
        ..lisa
    };
    let e = finetune_lisa(m.model.clone(), &user, &guide, pad, &cfg, &bad, &mut NoCallback)
        .unwrap_err();
    assert!(e.to_string().contains("lisa: finetune_steps"), "{e}");
}

/// The tiny model, its pad id, and the model with security vectors trained on the harmful
/// training pairs (switched off).
fn tiny_with_vectors() -> (LoadedModel<B>, u32, Llama<B>) {
    let m = tiny();
    let pad = m.tokenizer.pad_id();
    let (with_vectors, _) = train_security_vectors(
        m.model.clone(),
        &encode(&m, &harmful_pairs(false)),
        pad,
        &sv_config(),
        &mut NoCallback,
    )
    .unwrap();
    (m, pad, with_vectors)
}

/// Lisa beside active security vectors, with `vectors_when_aligning: false`: the vectors are off
/// for the alignment steps and on for the user's, and the returned model has them off. The first
/// step (alignment data) then has exactly the loss of the same run without vectors, and another
/// loss than the run that keeps them on.
#[test]
fn lisa_can_switch_the_vectors_off_for_its_alignment_steps() {
    use secvec_core::defence::{LisaConfig, finetune_lisa};
    /// Whether the security vectors were on after each step.
    struct VectorsOn(Vec<bool>);
    impl secvec_core::train::TrainCallback<B> for VectorsOn {
        fn on_eval(&mut self, _: usize, model: &Llama<B>) -> secvec_core::Result<()> {
            let a = model.layers[0].self_attn.q_proj.adapter(SECURITY).unwrap();
            self.0.push(a.active);
            Ok(())
        }
    }
    let (m, pad, with_vectors) = tiny_with_vectors();
    let user = encode(&m, &benign_pairs());
    let guide = encode(&m, &harmful_pairs(true));
    let run = |vectors, vectors_when_aligning| {
        let lisa = LisaConfig {
            align_steps: 2,
            finetune_steps: 3,
            vectors_when_aligning,
            ..LisaConfig::default()
        };
        let cfg = FinetuneConfig {
            security_vectors: vectors,
            ..lisa_finetune_config(7)
        };
        let mut on = VectorsOn(Vec::new());
        let (model, report) = finetune_lisa(
            with_vectors.clone(),
            &user,
            &guide,
            pad,
            &cfg,
            &lisa,
            &mut on,
        )
        .unwrap();
        let returned = model.layers[0].self_attn.q_proj.adapter(SECURITY).unwrap().active;
        (report, on.0, returned)
    };
    let (toggled, toggled_on, toggled_returned) = run(SecurityVectors::Active, false);
    let states: String = toggled
        .steps
        .iter()
        .map(|s| if s.aligning { 'A' } else { 'F' })
        .collect();
    assert_eq!(states, "AAFFFAA");
    let want: Vec<bool> = toggled.steps.iter().map(|s| !s.aligning).collect();
    assert_eq!(toggled_on, want);
    assert!(!toggled_returned, "inference has the vectors off");

    let (kept, kept_on, kept_returned) = run(SecurityVectors::Active, true);
    assert!(kept_on.iter().all(|&on| on), "{kept_on:?}");
    assert!(!kept_returned);
    let (off, off_on, _) = run(SecurityVectors::Off, false);
    assert!(off_on.iter().all(|&on| !on), "{off_on:?}");
    // Step 0 trains on the alignment data from the same weights: without vectors in the toggled
    // run, as in the run without vectors; with them in the run that keeps them.
    assert_eq!(toggled.steps[0].loss, off.steps[0].loss);
    assert!(
        (kept.steps[0].loss - toggled.steps[0].loss).abs() > 1e-3,
        "{} vs {}",
        kept.steps[0].loss,
        toggled.steps[0].loss
    );
}

/// SafeInstr beside active security vectors, its demonstrations trained with the vectors off: in
/// a step holding every example, the loss is the token-weighted sum of the user's examples' NLL
/// with the vectors on and the demonstrations' with them off, measured apart on the starting
/// model. With every example marked the run is the run without vectors, bit for bit; with none,
/// the plain run with them active; the returned model has them off.
#[test]
fn safe_instr_can_train_its_demonstrations_with_the_vectors_off() {
    use secvec_core::defence::finetune_safe_instr;
    let (m, pad, with_vectors) = tiny_with_vectors();
    let user = encode(&m, &benign_pairs());
    let refusals: Vec<TextPair> = harmful_pairs(true)
        .into_iter()
        .take(12)
        .map(|p| TextPair::new(p.prompt, "I can't help with that request."))
        .collect();
    let demos = encode(&m, &refusals);
    let examples: Vec<TrainExample> = user.iter().chain(&demos).cloned().collect();
    let marks: Vec<bool> = (0..examples.len()).map(|i| i >= user.len()).collect();
    let config = |vectors, batch_size, steps| FinetuneConfig {
        security_vectors: vectors,
        train: TrainConfig {
            batch_size,
            max_steps: Some(steps),
            ..lisa_finetune_config(steps).train
        },
        ..lisa_finetune_config(steps)
    };

    // One step over all 36 examples: the user's part with the vectors on, the demonstrations'
    // with them off.
    let one = config(SecurityVectors::Active, 64, 1);
    let (tuned, report) = finetune_safe_instr(
        with_vectors.clone(),
        &examples,
        &marks,
        pad,
        &one,
        &mut NoCallback,
    )
    .unwrap();
    let targets = |e: &[TrainExample]| e.iter().map(|x| x.n_target()).sum::<usize>() as f64;
    let mut on = with_vectors.clone();
    set_security_vectors(&mut on, true).unwrap();
    let mut off = with_vectors.clone();
    set_security_vectors(&mut off, false).unwrap();
    let want = (mean_nll(&on, &user, pad) * targets(&user)
        + mean_nll(&off, &demos, pad) * targets(&demos))
        / targets(&examples);
    let got = report.steps[0].loss;
    assert!((got - want).abs() < 1e-4 * want, "{got} vs {want}");
    let (_, plain) = finetune(with_vectors.clone(), &examples, pad, &one, &mut NoCallback).unwrap();
    assert!(
        (plain.steps[0].loss - got).abs() > 1e-3,
        "the demonstrations' loss with the vectors on is another: {} vs {got}",
        plain.steps[0].loss
    );
    let returned = tuned.layers[0].self_attn.q_proj.adapter(SECURITY).unwrap();
    assert!(!returned.active, "inference has the vectors off");

    // Several steps of 8: every example a demonstration is the run without vectors; none, the
    // run with them; without active vectors the marks change nothing.
    let active = config(SecurityVectors::Active, 8, 4);
    let inactive = config(SecurityVectors::Off, 8, 4);
    let run = |marks: &[bool], cfg: &FinetuneConfig| {
        let (model, report) = finetune_safe_instr(
            with_vectors.clone(),
            &examples,
            marks,
            pad,
            cfg,
            &mut NoCallback,
        )
        .unwrap();
        (task_weights(&model), report.steps.iter().map(|s| s.loss).collect::<Vec<_>>())
    };
    let plain = |cfg: &FinetuneConfig| {
        let (model, report) =
            finetune(with_vectors.clone(), &examples, pad, cfg, &mut NoCallback).unwrap();
        (task_weights(&model), report.steps.iter().map(|s| s.loss).collect::<Vec<_>>())
    };
    let all = vec![true; examples.len()];
    let none = vec![false; examples.len()];
    assert_eq!(run(&all, &active), plain(&inactive));
    assert_eq!(run(&none, &active), plain(&active));
    assert_eq!(run(&marks, &inactive), plain(&inactive));
    assert_ne!(run(&marks, &active).1, plain(&active).1);

    // Marks that do not match the examples: an error saying so.
    let e = finetune_safe_instr(
        with_vectors.clone(),
        &examples,
        &marks[1..],
        pad,
        &active,
        &mut NoCallback,
    )
    .unwrap_err();
    assert!(e.to_string().contains("35 demonstration marks for 36"), "{e}");
}

/// A killed SafeInstr run with its demonstrations under the vectors off resumes to the weights of
/// an uninterrupted one (the plan, its split included, is drawn again), and a saved state of a
/// run that marked other examples is refused, not resumed.
#[test]
fn a_killed_safe_instr_vectors_off_run_resumes_to_the_same_weights() {
    use secvec_core::defence::finetune_safe_instr;
    use secvec_core::train::Checkpointing;
    let (m, pad, with_vectors) = tiny_with_vectors();
    let examples: Vec<TrainExample> = encode(&m, &benign_pairs())
        .into_iter()
        .chain(encode(&m, &harmful_pairs(true)).into_iter().take(8))
        .collect();
    let marks: Vec<bool> = (0..examples.len()).map(|i| i >= 24).collect();
    let cfg = FinetuneConfig {
        security_vectors: SecurityVectors::Active,
        ..lisa_finetune_config(4)
    };
    let (want, _) = finetune_safe_instr(
        with_vectors.clone(),
        &examples,
        &marks,
        pad,
        &cfg,
        &mut NoCallback,
    )
    .unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("attacked-active.partial");
    let mut with_checkpoints = cfg.clone();
    with_checkpoints.train.checkpoint = Some(Checkpointing {
        dir: dir.clone(),
        every: 1,
    });
    let e = finetune_safe_instr(
        with_vectors.clone(),
        &examples,
        &marks,
        pad,
        &with_checkpoints,
        &mut KillAt(2),
    )
    .unwrap_err();
    assert!(e.to_string().contains("killed at step 2"), "{e}");
    // Another run's marks: its fingerprint differs, and the saved state is not used.
    let other: Vec<bool> = marks.iter().map(|m| !m).collect();
    let e = finetune_safe_instr(
        with_vectors.clone(),
        &examples,
        &other,
        pad,
        &with_checkpoints,
        &mut NoCallback,
    )
    .unwrap_err();
    assert!(e.to_string().contains("another training run"), "{e}");
    let (got, _) = finetune_safe_instr(
        with_vectors.clone(),
        &examples,
        &marks,
        pad,
        &with_checkpoints,
        &mut NoCallback,
    )
    .unwrap();
    assert_eq!(task_weights(&got), task_weights(&want));
}

/// Vaccine's perturbation is the loss's steepest ascent direction in the attention outputs: for a
/// small ρ the perturbed loss exceeds the clean one by ρ‖g‖ to first order. Aligning under it
/// (Vaccine, Huang et al., NeurIPS 2024) trains only the `align` adapter and leaves a model whose
/// loss barely moves under its worst perturbation of that norm, where plain alignment's rises
/// (measured on flex, 30 steps at ρ = 20: +4.3 against +245).
#[test]
fn vaccine_perturbs_along_the_gradient_and_aligns_against_it() {
    use secvec_core::defence::vaccine::perturbed_nll_sum;
    use secvec_core::defence::{VaccineConfig, train_alignment_vaccine};
    use secvec_core::train::batch::make_batch;
    use secvec_core::train::loss::response_nll_sum;
    use secvec_core::train::{AlignConfig, train_alignment};
    let m = tiny();
    let pad = m.tokenizer.pad_id();
    let data = encode(&m, &benign_pairs());
    let refs: Vec<&TrainExample> = data[..8].iter().collect();
    let batch = make_batch::<B>(&refs, pad, &m.model.device());
    let scalar = |t: Tensor<B, 1>| -> f64 {
        t.into_data().convert::<f64>().to_vec::<f64>().unwrap()[0]
    };
    let clean = scalar(response_nll_sum(&m.model, &batch));
    let rho = 1e-3;
    let (perturbed, norm) = perturbed_nll_sum(&m.model, &batch, rho);
    let rise = scalar(perturbed) - clean;
    assert!(norm > 0.0);
    assert!(
        (rise - rho * norm).abs() < 0.05 * rho * norm,
        "rise {rise} vs ρ‖g‖ {}",
        rho * norm
    );

    let cfg = AlignConfig {
        adapter: AdapterConfig {
            targets: secvec_core::train::phases::all_targets(),
            seed: 5,
            ..AdapterConfig::default()
        },
        train: TrainConfig {
            max_steps: Some(30),
            ..quick(1e-2, 3)
        },
    };
    let vaccine = VaccineConfig { rho: 20.0 };
    let (vaccinated, report) =
        train_alignment_vaccine(m.model.clone(), &data, pad, &cfg, &vaccine, &mut NoCallback)
            .unwrap();
    let (plain, _) = train_alignment(m.model.clone(), &data, pad, &cfg, &mut NoCallback).unwrap();
    assert_eq!(report.steps.len(), 30);
    // Only the adapter learned: the base is untouched.
    assert_eq!(
        host(vaccinated.layers[0].self_attn.q_proj.weight.val()),
        host(m.model.layers[0].self_attn.q_proj.weight.val())
    );
    // The rise of each model's loss under its own worst perturbation of norm ρ.
    let rise = |model: &Llama<B>| {
        scalar(perturbed_nll_sum(model, &batch, vaccine.rho).0)
            - scalar(response_nll_sum(model, &batch))
    };
    let (v, p) = (rise(&vaccinated), rise(&plain));
    eprintln!("loss rise under a ρ={} perturbation: vaccine {v:.3}, plain {p:.3}", vaccine.rho);
    assert!(v < 0.25 * p, "vaccine {v} vs plain {p}");

    // Another run's checkpoint: plain alignment's partial state is not Vaccine's.
    let tmp = tempfile::tempdir().unwrap();
    let ck = secvec_core::train::Checkpointing {
        dir: tmp.path().join("align.partial"),
        every: 2,
    };
    struct Kill;
    impl secvec_core::train::TrainCallback<B> for Kill {
        fn on_eval(&mut self, _: usize, _: &Llama<B>) -> secvec_core::Result<()> {
            Err(CoreError::InvalidConfig("killed".into()))
        }
    }
    let mut killed = cfg.clone();
    killed.train.checkpoint = Some(ck.clone());
    killed.train.eval_every = Some(3);
    train_alignment(m.model.clone(), &data, pad, &killed, &mut Kill).unwrap_err();
    let mut resumed = cfg.clone();
    resumed.train.checkpoint = Some(ck);
    let e = train_alignment_vaccine(m.model.clone(), &data, pad, &resumed, &vaccine, &mut NoCallback)
        .unwrap_err();
    assert!(e.to_string().contains("another training run"), "{e}");
}
