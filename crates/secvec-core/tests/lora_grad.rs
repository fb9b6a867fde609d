//! The SmolLM2 LoRA gradient reference of PEFT (tests/fixtures/smollm2/reference.json,
//! `lora_grad`): rank 4, alpha 8 on q_proj and v_proj of all 30 layers, A from torch's seeded
//! normal generator (reproduced below), B = 0.001; the masked loss of `nll[1]` and the gradients
//! of layers 0 and 29.
//!
//! Every test of `cases/lora_grad.rs` runs on flex and on ndarray with the same bounds; half
//! precision on flex only (ndarray has no half-precision kernels).

/// burn-flex under autodiff.
mod flex {
    type B = burn::backend::Autodiff<burn::backend::Flex>;
    include!("cases/lora_grad.rs");

    /// Mixed precision against PEFT's f32 gradients: the same direction and size within what half
    /// precision allows (bounds about twice the measured deviations, in the comments).
    #[test]
    fn half_precision_lora_gradients_track_peft() {
        let bf16 = deviation_from_peft(Precision::Bf16);
        // Measured on flex: loss 0.014, norm 3.0%, first8 0.095 RMS.
        assert!(
            bf16.loss < 0.03 && bf16.norm < 0.06 && bf16.first8 < 0.2,
            "{bf16:?}"
        );
        let f16 = deviation_from_peft(Precision::F16);
        // Measured on flex: loss 0.0016, norm 0.64%, first8 0.014 RMS.
        assert!(
            f16.loss < 0.004 && f16.norm < 0.013 && f16.first8 < 0.03,
            "{f16:?}"
        );
        // Each is really computed in half precision.
        assert!(bf16.norm > f16.norm && f16.norm > 1e-5, "{bf16:?} {f16:?}");
    }
}

/// burn-ndarray under autodiff (built without burn-ndarray's `simd` feature: README.md,
/// "Backends").
mod ndarray {
    type B = burn::backend::Autodiff<burn::backend::NdArray<f32>>;
    include!("cases/lora_grad.rs");
}
