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

/// PEFT LoRA adapters to build a model from, for the commands that use one (`evaluate`,
/// `generate`): an experiment run keeps those of its models in `runs/<run>/adapters/`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct AdapterArgs {
    /// A PEFT LoRA adapter directory merged into the model's weights (repeatable, merged in
    /// order): e.g. an experiment run's `adapters/align`.
    #[arg(long = "merge", value_name = "DIR")]
    pub merge: Vec<PathBuf>,
    /// A PEFT LoRA adapter directory attached, switched on, after the merges (repeatable): e.g. a
    /// run's `adapters/attacked-active` (its task LoRA); `adapters/security` before it gives the
    /// same model with the security vectors on.
    #[arg(long = "adapter", value_name = "DIR")]
    pub attach: Vec<PathBuf>,
}

impl AdapterArgs {
    /// Merges the `--merge` adapters into the weights, then attaches the `--adapter` ones,
    /// switched on: the order in which an experiment run builds its models (the alignment
    /// merged, the vectors and the task LoRA attached). Errors name the option and directory.
    pub fn apply<B: burn::tensor::backend::Backend>(
        &self,
        model: &mut secvec_models::Llama<B>,
    ) -> Result<()> {
        use secvec_core::adapter::{load_peft_adapter, merge_adapter};
        for (i, dir) in self.merge.iter().enumerate() {
            let name = format!("merged-{i}");
            let what = || format!("--merge {}", dir.display());
            load_peft_adapter(model, dir, &name).with_context(what)?;
            merge_adapter(model, &name).with_context(what)?;
            eprintln!("merged the adapter {}", dir.display());
        }
        for (i, dir) in self.attach.iter().enumerate() {
            load_peft_adapter(model, dir, &format!("adapter-{i}"))
                .with_context(|| format!("--adapter {}", dir.display()))?;
            eprintln!("attached the adapter {} (on)", dir.display());
        }
        Ok(())
    }
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
