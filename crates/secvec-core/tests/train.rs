//! The trainer and the three phases on a small model (tiny-llama fixture: 2 layers, hidden 32,
//! the real 49k SmolLM2 tokenizer), fast and deterministic, on both CPU backends: every test of
//! `cases/train.rs` runs once on flex and once on ndarray with the same bounds. Mixed precision
//! runs on flex only (ndarray has no half-precision kernels, and refuses them: see
//! `precision::probe`).

/// burn-flex under autodiff.
mod flex {
    type B = burn::backend::Autodiff<burn::backend::Flex>;
    include!("cases/train.rs");

    /// A task LoRA trained on the benign pairs in `precision`: the report and the final mean NLL.
    fn train_task_lora(
        precision: secvec_models::Precision,
        cfg: TrainConfig,
    ) -> secvec_core::Result<(Llama<B>, secvec_core::train::TrainReport, f64)> {
        let m = tiny();
        let pad = m.tokenizer.pad_id();
        let data = encode(&m, &benign_pairs());
        let mut model = m.model.with_precision(precision);
        let config = AdapterConfig {
            targets: secvec_core::train::phases::all_targets(),
            ..AdapterConfig::default()
        };
        adapter::add_adapter(&mut model, TASK, &config).unwrap();
        adapter::set_base_trainable(&mut model, false);
        adapter::set_adapter_trainable(&mut model, TASK, true).unwrap();
        let (model, report) = train(model, &data, pad, &cfg, &mut NoCallback)?;
        let nll = mean_nll(&model, &data, pad);
        Ok((model, report, nll))
    }

    /// bf16 and f16 mixed precision follow f32's first steps closely and learn the same data; the
    /// trained (master) weights stay f32. At lr 1e-2 (stable: at 2e-2 this tiny model's loss
    /// spikes after a dozen steps and any rounding difference sends the runs apart, so the final
    /// NLL measured the chaos, not the precision) bf16 ends at 10.81 against f32's 10.70.
    #[test]
    fn mixed_precision_training_learns_like_f32() {
        use burn::tensor::DType;
        use secvec_models::Precision;
        let cfg = TrainConfig {
            max_steps: Some(36),
            ..quick(1e-2, 1)
        };
        let (_, f32_report, f32_nll) = train_task_lora(Precision::F32, cfg.clone()).unwrap();
        let start = f32_report.steps[0].loss;
        assert!(
            f32_nll < 0.5 * start,
            "f32 did not learn: {start} -> {f32_nll}"
        );
        for p in [Precision::Bf16, Precision::F16] {
            let (model, report, nll) = train_task_lora(p, cfg.clone()).unwrap();
            eprintln!(
                "{p}: final NLL {nll} (f32: {f32_nll}), {} skipped",
                report.skipped_steps
            );
            // The first three steps (measured: loss within 0.1%, gradient norm within 0.6%).
            for (h, f) in report.steps.iter().zip(&f32_report.steps).take(3) {
                assert!(
                    (h.loss - f.loss).abs() < 0.005 * f.loss,
                    "{p}: {h:?} vs {f:?}"
                );
                assert!(
                    (h.grad_norm - f.grad_norm).abs() < 0.02 * f.grad_norm,
                    "{p}: {h:?} vs {f:?}"
                );
            }
            assert!(nll < 0.5 * start, "{p} did not learn: {start} -> {nll}");
            let a = &model.layers[0].self_attn.q_proj.adapter(TASK).unwrap().a;
            assert_eq!(a.val().dtype(), DType::F32, "{p}: master weights");
            if p == Precision::Bf16 {
                // Same trajectory (measured 10.81 vs 10.70).
                assert!(
                    (nll - f32_nll).abs() < 0.15 * f32_nll,
                    "{p}: {nll} vs f32 {f32_nll}"
                );
                assert!(
                    report
                        .steps
                        .iter()
                        .all(|s| s.loss_scale.is_none() && !s.skipped)
                );
            } else {
                // f16 scales the loss; a step whose gradient norm reaches ~10 overflows at the
                // initial 2^16 and is skipped, which changes the trajectory from there on.
                assert_eq!(report.steps[0].loss_scale, Some(65536.0));
                let skipped: Vec<_> = report.steps.iter().filter(|s| s.skipped).collect();
                assert_eq!(skipped.len(), report.skipped_steps);
                assert!(skipped.iter().all(|s| !s.grad_norm.is_finite()));
            }
        }
    }

    /// An f16 loss scale far too large overflows the gradients: those steps are skipped (no
    /// update), the scale halves each time, and training then proceeds and learns.
    #[test]
    fn f16_loss_scaling_skips_overflowing_steps_and_recovers() {
        use secvec_core::train::LossScaleConfig;
        use secvec_models::Precision;
        // `steps` steps at `lr`, the loss scale starting at 2^`log2_init`.
        let cfg = |steps, lr, log2_init, max_consecutive_skips| TrainConfig {
            max_steps: Some(steps),
            loss_scale: LossScaleConfig {
                init: 2f64.powi(log2_init),
                growth_interval: 2000,
                max_consecutive_skips,
            },
            ..quick(lr, 1)
        };
        let (_, report, nll) = train_task_lora(Precision::F16, cfg(70, 2e-2, 40, 64)).unwrap();
        let steps = &report.steps;
        assert!(steps[0].skipped, "2^40 must overflow f16");
        // A burst of skipped steps from the start, until the scale fits.
        let burst = steps.iter().take_while(|s| s.skipped).count();
        assert!(
            burst > 5 && burst < 40,
            "{burst} skipped steps at the start"
        );
        // Every skipped step halves the scale for the next; a good one keeps it (the growth
        // interval is never reached here).
        for w in steps.windows(2) {
            let (a, b) = (w[0].loss_scale.unwrap(), w[1].loss_scale.unwrap());
            assert_eq!(b, if w[0].skipped { a / 2.0 } else { a }, "{w:?}");
        }
        assert_eq!(
            report.skipped_steps,
            steps.iter().filter(|s| s.skipped).count()
        );
        // Skipped steps leave the weights alone: the loss only moves by the batch it is measured on.
        let first_update = &steps[burst];
        assert!((first_update.loss - steps[0].loss).abs() < 0.1 * steps[0].loss);
        assert!(
            nll < 0.5 * steps[0].loss,
            "no learning after the skips: {nll}"
        );

        // Overflow at every scale is a divergence, reported as such.
        let err = train_task_lora(Precision::F16, cfg(10, 5e-3, 60, 3)).unwrap_err();
        assert!(matches!(err, CoreError::NonFinite { step: 2, .. }), "{err}");
        assert!(err.to_string().contains("f16 gradients"), "{err}");
    }
}

/// burn-ndarray under autodiff (built without burn-ndarray's `simd` feature: README.md,
/// "Backends").
mod ndarray {
    type B = burn::backend::Autodiff<burn::backend::NdArray<f32>>;
    include!("cases/train.rs");
}
