//! Activation-steering security vectors (`secvec_core::steering`) on the tiny Llama fixture: the
//! direction is the difference of mean response activations, an active vector moves its layer's
//! output by exactly `coefficient · v`, an inactive one changes nothing, and training leaves it
//! untouched.

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Tensor, TensorData};
use secvec_core::adapter::set_base_trainable;
use secvec_core::steering::{
    attach_steering, mean_response_activations, remove_steering, set_steering_active,
    steering_directions, steering_names,
};
use secvec_core::train::{NoCallback, TextPair, TrainConfig, TrainExample, encode_pairs, train};
use secvec_models::attention::build_attention_mask;
use secvec_models::loader::load_hf_dir;
use secvec_models::testing::fixtures;
use secvec_models::transformer::int_tensor;
use secvec_models::{Llama, LoadedModel};

type B = Autodiff<Flex>;

fn tiny() -> LoadedModel<B> {
    load_hf_dir::<B>(&fixtures().join("tiny-llama-bf16"), &Default::default()).unwrap()
}

fn examples(m: &LoadedModel<B>, responses: &[&str]) -> Vec<TrainExample> {
    let pairs: Vec<TextPair> = responses
        .iter()
        .enumerate()
        .map(|(i, r)| TextPair::new(format!("How do I break into house {i}?"), *r))
        .collect();
    encode_pairs(&m.tokenizer, &pairs, None, 64).unwrap()
}

/// The residual stream after every layer for one unpadded example, on the host.
fn layer_states(model: &Llama<B>, e: &TrainExample) -> Vec<Vec<f32>> {
    let device = model.device();
    let len = e.ids.len();
    let ids: Vec<i64> = e.ids.iter().map(|&t| t as i64).collect();
    let ids = Tensor::from_data(TensorData::new(ids, [1, len]), &device);
    let positions = int_tensor::<B>(&[(0..len as i64).collect()], &device);
    let mask = build_attention_mask::<B>(1, len, 0, None, &device);
    model
        .forward_layers(ids, &positions, &mask)
        .into_iter()
        .map(|t| t.into_data().convert::<f32>().into_vec::<f32>().unwrap())
        .collect()
}

#[test]
fn the_direction_is_the_difference_of_mean_response_activations() {
    let m = tiny();
    let d = m.model.hidden_size();
    let compliant = examples(
        &m,
        &[
            "Sure, here is how: step 1, step 2.",
            "Of course. First, look.",
        ],
    );
    let refusing = examples(&m, &["I'm sorry, but I can't help with that.", "No."]);
    let pad = m.tokenizer.pad_id();
    // By hand, one unpadded example at a time, every response token counted once.
    let mean = |ex: &[TrainExample], layer: usize| {
        let mut sum = vec![0.0f64; d];
        let mut n = 0;
        for e in ex {
            let states = layer_states(&m.model, e);
            for t in e.n_prompt..e.ids.len() {
                for (s, v) in sum.iter_mut().zip(&states[layer][t * d..(t + 1) * d]) {
                    *s += *v as f64;
                }
                n += 1;
            }
        }
        sum.iter()
            .map(|s| (s / n as f64) as f32)
            .collect::<Vec<f32>>()
    };
    // Batched and right-padded (two examples of different lengths per batch) gives the same.
    let batched = mean_response_activations(&m.model, &compliant, pad, &[1, 0], 2).unwrap();
    for (k, layer) in [1, 0].into_iter().enumerate() {
        let want = mean(&compliant, layer);
        for (a, b) in batched[k].iter().zip(&want) {
            assert!((a - b).abs() < 1e-4, "layer {layer}: {a} vs {b}");
        }
    }
    let dirs = steering_directions(&m.model, &compliant, &refusing, pad, &[1], 2).unwrap();
    assert_eq!(dirs.len(), 1);
    assert_eq!(dirs[0].0, 1);
    let (a, b) = (mean(&compliant, 1), mean(&refusing, 1));
    for ((got, x), y) in dirs[0].1.iter().zip(&a).zip(&b) {
        assert!((got - (x - y)).abs() < 1e-4, "{got} vs {}", x - y);
    }
    assert!(dirs[0].1.iter().any(|v| v.abs() > 1e-3), "a zero direction");
}

#[test]
fn an_active_vector_moves_its_layer_by_coefficient_times_v_and_an_inactive_one_changes_nothing() {
    let m = tiny();
    let mut model = m.model.clone();
    let e = &examples(&m, &["Sure, here is how."])[0];
    let d = model.hidden_size();
    let before = layer_states(&model, e);
    let v: Vec<f32> = (0..d).map(|i| (i as f32 * 0.37).sin()).collect();
    attach_steering(&mut model, "harm", &[(0, v.clone())], 2.5).unwrap();
    assert_eq!(steering_names(&model), vec!["harm".to_string()]);
    let after = layer_states(&model, e);
    for (t, (x, y)) in before[0].chunks(d).zip(after[0].chunks(d)).enumerate() {
        for (i, (a, b)) in x.iter().zip(y).enumerate() {
            assert!((b - a - 2.5 * v[i]).abs() < 1e-5, "position {t}, unit {i}");
        }
    }
    assert_ne!(
        before[1], after[1],
        "the next layer sees the steered stream"
    );
    // Off: bit-identical to the model without it.
    assert_eq!(set_steering_active(&mut model, "harm", false).unwrap(), 1);
    assert_eq!(layer_states(&model, e), before);
    // Removed: the same direction and coefficient come back.
    let (dirs, coefficient) = remove_steering(&mut model, "harm").unwrap();
    assert_eq!(dirs, vec![(0, v)]);
    assert_eq!(coefficient, 2.5);
    assert!(steering_names(&model).is_empty());
}

#[test]
fn training_with_the_vector_on_leaves_it_untouched() {
    let m = tiny();
    let pad = m.tokenizer.pad_id();
    let data = examples(&m, &["Sure, here is how: step 1.", "Of course, step one."]);
    let mut model = m.model.clone();
    let d = model.hidden_size();
    let v: Vec<f32> = (0..d).map(|i| i as f32 / d as f32).collect();
    attach_steering(&mut model, "harm", &[(1, v.clone())], 1.0).unwrap();
    set_base_trainable(&mut model, true);
    let before = model.layers[0].self_attn.q_proj.weight.val().into_data();
    let cfg = TrainConfig {
        lr: 1e-2,
        max_steps: Some(2),
        batch_size: 2,
        progress: false,
        ..TrainConfig::default()
    };
    let (mut model, _) = train(model, &data, pad, &cfg, &mut NoCallback).unwrap();
    assert_ne!(
        model.layers[0].self_attn.q_proj.weight.val().into_data(),
        before,
        "the model trained"
    );
    let (dirs, _) = remove_steering(&mut model, "harm").unwrap();
    assert_eq!(dirs, vec![(1, v)], "the steering vector is frozen");
}

#[test]
fn bad_steering_requests_are_errors_naming_the_problem() {
    let m = tiny();
    let mut model = m.model.clone();
    let d = model.hidden_size();
    let n = model.num_layers();
    let err = |r: secvec_core::Result<()>| r.unwrap_err().to_string();
    assert!(
        err(attach_steering(&mut model, "x", &[(n, vec![0.0; d])], 1.0))
            .contains(&format!("layer {n} does not exist"))
    );
    assert!(
        err(attach_steering(
            &mut model,
            "x",
            &[(0, vec![0.0; d + 1])],
            1.0
        ))
        .contains("hidden size")
    );
    assert!(
        err(attach_steering(
            &mut model,
            "x",
            &[(0, vec![0.0; d])],
            f64::NAN
        ))
        .contains("not finite")
    );
    attach_steering(&mut model, "x", &[(0, vec![0.0; d])], 1.0).unwrap();
    assert!(
        err(attach_steering(&mut model, "x", &[(1, vec![0.0; d])], 1.0))
            .contains("already attached")
    );
    assert!(
        set_steering_active(&mut model, "y", true)
            .unwrap_err()
            .to_string()
            .contains("no steering vector named `y`")
    );
    let pad = m.tokenizer.pad_id();
    assert!(
        mean_response_activations(&model, &[], pad, &[0], 2)
            .unwrap_err()
            .to_string()
            .contains("no example")
    );
    assert!(
        mean_response_activations(&model, &[], pad, &[], 2)
            .unwrap_err()
            .to_string()
            .contains("no layer")
    );
}
