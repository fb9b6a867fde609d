// The SmolLM2 LoRA gradient tests, one body for every CPU backend: tests/lora_grad.rs includes
// this file in one module per backend, each of which defines `B` (an autodiff backend) first.

use std::sync::OnceLock;

use burn::tensor::{DType, Tensor, TensorData};
use rand_mt::Mt;
use secvec_core::adapter::{AdapterConfig, add_adapter, set_base_trainable};
use secvec_core::train::TrainExample;
use secvec_core::train::batch::make_batch;
use secvec_core::train::loss::response_nll_sum;
use secvec_models::testing::*;
use secvec_models::{LoadedModel, Precision, ProjectionId, ProjectionKind};

fn model() -> &'static LoadedModel<B> {
    static MODEL: OnceLock<LoadedModel<B>> = OnceLock::new();
    MODEL.get_or_init(load_smollm2::<B>)
}

/// torch's CPU `randn` for float32 tensors of at least 16 elements: uniform floats from the
/// mt19937 stream (24 random bits each), then Box–Muller over blocks of 16
/// (`normal_fill_16` in ATen's DistributionTemplates), the last block redrawn when the size is
/// not a multiple of 16.
fn torch_randn(mt: &mut Mt, n: usize) -> Vec<f32> {
    assert!(n >= 16);
    let mut uniform = || ((mt.next_u32() & ((1 << 24) - 1)) as f64 / (1u64 << 24) as f64) as f32;
    let mut data: Vec<f32> = (0..n).map(|_| uniform()).collect();
    let fill16 = |d: &mut [f32]| {
        for j in 0..8 {
            let u1 = 1.0 - d[j];
            let u2 = d[j + 8];
            let radius = (-2.0 * u1.ln()).sqrt();
            let theta = (2.0 * std::f64::consts::PI * u2 as f64) as f32;
            d[j] = radius * theta.cos();
            d[j + 8] = radius * theta.sin();
        }
    };
    let mut i = 0;
    while i + 16 <= n {
        fill16(&mut data[i..i + 16]);
        i += 16;
    }
    if !n.is_multiple_of(16) {
        for v in &mut data[n - 16..] {
            *v = uniform();
        }
        fill16(&mut data[n - 16..]);
    }
    data
}

/// How far our loss and gradients are from PEFT's (computed in f32).
#[derive(Debug, PartialEq)]
struct Deviation {
    /// |loss − PEFT's|.
    loss: f64,
    /// Largest relative error of a gradient tensor's norm.
    norm: f64,
    /// Largest |sum − PEFT's| relative to max(norm, |sum|).
    sum: f64,
    /// Largest error of the first 8 gradient entries, in units of the tensor's RMS.
    first8: f64,
    tensors: usize,
}

fn deviation_from_peft(precision: Precision) -> Deviation {
    let reference = read_json(&fixtures().join("smollm2/reference.json"));
    let lg = &reference["lora_grad"];
    let example = &reference["nll"][1];
    let mut model = model().model.clone().with_precision(precision);
    set_base_trainable(&mut model, false);
    let config = AdapterConfig {
        rank: 4,
        alpha: 8.0,
        targets: vec!["q_proj".into(), "v_proj".into()],
        ..AdapterConfig::default()
    };
    assert_eq!(add_adapter(&mut model, "default", &config).unwrap(), 60);

    // PEFT's named_parameters order: per layer q_proj.lora_A, (q lora_B), v_proj.lora_A, ...
    let mut mt = Mt::new(1234);
    let device = model.device();
    for layer in 0..30 {
        for kind in [ProjectionKind::Q, ProjectionKind::V] {
            let proj = model.projection_mut(ProjectionId { layer, kind });
            let (d_in, d_out) = (proj.d_in(), proj.d_out());
            let a_peft: Vec<f32> = torch_randn(&mut mt, 4 * d_in)
                .iter()
                .map(|x| x * 0.01)
                .collect();
            // PEFT's lora_A is [r, d_in]; ours is its transpose.
            let a = secvec_models::weights::transpose(&a_peft, 4, d_in);
            let adapter = proj.adapter_mut("default").unwrap();
            adapter.a = adapter
                .a
                .clone()
                .map(|_| Tensor::from_data(TensorData::new(a, [d_in, 4]), &device).require_grad());
            adapter.b = adapter
                .b
                .clone()
                .map(|_| Tensor::full([4, d_out], 0.001, &device).require_grad());
        }
    }

    let ex = TrainExample {
        ids: u32s(&example["full_ids"]),
        n_prompt: example["n_prompt_tokens"].as_u64().unwrap() as usize,
    };
    let batch = make_batch::<B>(&[&ex], 2, &device);
    let loss = response_nll_sum(&model, &batch).div_scalar(batch.n_targets as f64);
    let loss_value = loss
        .clone()
        .into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .unwrap()[0];
    let mut dev = Deviation {
        loss: (loss_value - lg["loss"].as_f64().unwrap()).abs(),
        norm: 0.0,
        sum: 0.0,
        first8: 0.0,
        tensors: 0,
    };

    let grads = loss.backward();
    let expected = lg["grads_layers_0_and_29"].as_object().unwrap();
    for layer in [0, 29] {
        for kind in [ProjectionKind::Q, ProjectionKind::V] {
            let id = ProjectionId { layer, kind };
            let adapter = model.projection(id).adapter("default").unwrap();
            for (which, param) in [("lora_A", &adapter.a), ("lora_B", &adapter.b)] {
                let key = format!("base_model.model.{}.{which}.default.weight", id.hf_path());
                let e = &expected[&key];
                let g = param.grad(&grads).expect("adapter gradient");
                // Master weights stay f32, and so do their gradients.
                assert_eq!(g.dtype(), DType::F32, "{key}");
                let [rows, cols] = g.dims();
                // Ours is the transpose of PEFT's layout.
                let ours = secvec_models::weights::transpose(
                    &g.into_data().to_vec::<f32>().unwrap(),
                    rows,
                    cols,
                );
                let norm = ours.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
                let sum: f64 = ours.iter().map(|&x| x as f64).sum();
                let (en, es) = (e["norm"].as_f64().unwrap(), e["sum"].as_f64().unwrap());
                dev.norm = dev.norm.max((norm - en).abs() / en);
                dev.sum = dev.sum.max((sum - es).abs() / en.max(es.abs()));
                let rms = en / (ours.len() as f64).sqrt();
                for (a, b) in ours[..8].iter().zip(f32s(&e["first8"])) {
                    dev.first8 = dev.first8.max((*a as f64 - b as f64).abs() / rms.max(1e-9));
                }
                dev.tensors += 1;
            }
        }
    }
    assert_eq!(dev.tensors, expected.len());
    eprintln!("{precision}: {dev:?}");
    dev
}

#[test]
fn lora_loss_and_gradients_match_peft() {
    let d = deviation_from_peft(Precision::F32);
    assert!(d.loss < 1e-4, "{d:?}");
    assert!(d.norm <= 1e-3 && d.sum <= 1e-3 && d.first8 <= 2e-3, "{d:?}");
}

/// The same loss and gradients, bit for bit, when computed again in the same process (new
/// allocations, other addresses: burn-ndarray's SIMD reciprocal made them differ).
#[test]
fn lora_loss_and_gradients_are_the_same_run_to_run() {
    assert_eq!(deviation_from_peft(Precision::F32), deviation_from_peft(Precision::F32));
}
