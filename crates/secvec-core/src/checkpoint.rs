//! Full-model checkpoints (after full fine-tuning) as Hugging Face safetensors: the tensors
//! under transformers' key names and layouts (`nn.Linear.weight` is `[out, in]`), so the
//! directory loads here (with its `config.json` and tokenizer files) and in transformers.

use std::path::Path;

use burn::tensor::{Tensor, backend::Backend};

use secvec_models::Llama;
use secvec_models::weights::transpose;

use crate::adapter::peft::write_f32_safetensors;
use crate::error::{CoreError, Result};

/// A tensor's values as f32 on the host (also used by the training checkpoints of `train::resume`).
pub(crate) fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec()
        .expect("f32 after convert")
}

/// The model's base weights under Hugging Face names, f32, PyTorch layouts. Attached adapters
/// are not included (merge them first with [`crate::adapter::merge_adapter`] to keep them).
pub fn hf_tensors<B: Backend>(model: &Llama<B>) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut out = Vec::new();
    let [vocab, d] = model.embed_tokens.dims();
    out.push((
        "model.embed_tokens.weight".to_string(),
        vec![vocab, d],
        host(model.embed_tokens.val()),
    ));
    for (i, layer) in model.layers.iter().enumerate() {
        for (name, norm) in [
            ("input_layernorm", &layer.input_layernorm),
            ("post_attention_layernorm", &layer.post_attention_layernorm),
        ] {
            out.push((
                format!("model.layers.{i}.{name}.weight"),
                vec![d],
                host(norm.weight.val()),
            ));
        }
    }
    for id in model.projection_ids() {
        let p = model.projection(id);
        let (d_in, d_out) = (p.d_in(), p.d_out());
        let path = id.hf_path();
        out.push((
            format!("{path}.weight"),
            vec![d_out, d_in],
            transpose(&host(p.weight.val()), d_in, d_out),
        ));
        if let Some(b) = &p.bias {
            out.push((format!("{path}.bias"), vec![d_out], host(b.val())));
        }
    }
    out.push((
        "model.norm.weight".into(),
        vec![d],
        host(model.norm.weight.val()),
    ));
    if let Some(head) = &model.lm_head {
        out.push((
            "lm_head.weight".into(),
            vec![vocab, d],
            transpose(&host(head.val()), d, vocab),
        ));
    }
    out
}

/// Writes `model.safetensors` (f32, Hugging Face key names) into `dir`. Copy the source model's
/// `config.json` and tokenizer files beside it to get a loadable model directory.
pub fn save_hf_safetensors<B: Backend>(model: &Llama<B>, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| CoreError::io(dir, e))?;
    let path = dir.join("model.safetensors");
    let tensors = hf_tensors(model);
    write_f32_safetensors(&path, &tensors)
}
