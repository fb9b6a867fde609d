//! Options shared by the commands that load a model, and the one place where a precision and a
//! backend turn a model source into a model.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use secvec_models::{ModelSource, load_model};

use crate::backend::BackendKind;

/// Options shared by commands that load a model.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// A known model name (smollm2-135m-instruct), a .gguf file, or a Hugging Face directory.
    #[arg(long, default_value = "smollm2-135m-instruct")]
    pub model: String,
    /// Compute backend (flex is the fastest CPU backend measured here; see results/benchmarks).
    #[arg(long, value_enum, default_value_t = BackendKind::Flex)]
    pub backend: BackendKind,
    /// Compute precision: f32, or bf16 / f16 mixed precision (half-precision matrix products,
    /// f32 weights). Needs a backend with half kernels (flex, cuda; not ndarray).
    #[arg(long, default_value = "f32")]
    pub dtype: secvec_models::Precision,
    /// Cache directory for fetched models (default: $SECVEC_CACHE_DIR or ~/.cache/secvec).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}

/// Loads `source` (named `name` in errors) to compute in `dtype`. The backend is first checked
/// to support `dtype` (an error names the option or field `dtype_field`); the one place where
/// the commands and the experiment runner turn a precision into a model.
pub fn load_model_as<B: burn::tensor::backend::Backend>(
    source: &ModelSource,
    name: &str,
    cache_dir: Option<&std::path::Path>,
    device: &B::Device,
    dtype: secvec_models::Precision,
    dtype_field: &str,
) -> Result<secvec_models::LoadedModel<B>> {
    secvec_models::precision::probe::<B>(dtype, device)
        .map_err(|e| anyhow::anyhow!("{dtype_field}: {e}"))?;
    let mut loaded = load_model::<B>(source, cache_dir, device)
        .with_context(|| format!("loading model `{name}`"))?;
    loaded.model = loaded.model.with_precision(dtype);
    Ok(loaded)
}

impl ModelArgs {
    /// Resolves and loads the model, reporting the load time on stderr.
    pub fn load<B: burn::tensor::backend::Backend>(
        &self,
        device: &B::Device,
        backend: BackendKind,
    ) -> Result<(ModelSource, secvec_models::LoadedModel<B>)> {
        let t0 = Instant::now();
        let source = ModelSource::parse(&self.model)?;
        let loaded = load_model_as::<B>(
            &source,
            &self.model,
            self.cache_dir.as_deref(),
            device,
            self.dtype,
            "--dtype",
        )?;
        eprintln!(
            "loaded {} on {backend} ({}) in {:.1}s",
            source.display_name(),
            self.dtype,
            t0.elapsed().as_secs_f64()
        );
        Ok((source, loaded))
    }

    /// [`ModelArgs::load`] for inference only: in bf16/f16 the weights are stored in that type
    /// too ([`secvec_models::Llama::with_half_weights`]).
    pub fn load_for_inference<B: burn::tensor::backend::Backend>(
        &self,
        device: &B::Device,
        backend: BackendKind,
    ) -> Result<(ModelSource, secvec_models::LoadedModel<B>)> {
        let (source, mut loaded) = self.load::<B>(device, backend)?;
        loaded.model = loaded.model.with_half_weights();
        Ok((source, loaded))
    }
}
