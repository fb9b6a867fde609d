//! `secvec-experiments`: the secvec command line.

mod backend;
mod bench;
mod bench_suite;
mod check;
mod evaluate;
mod experiment;
mod pipeline;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::{Parser, Subcommand};
use secvec_models::{GenerationConfig, Message, ModelSource, Sampling, generate, load_model};

use backend::{BackendKind, Job, dispatch};

#[derive(Parser, Debug)]
#[command(
    name = "secvec-experiments",
    version,
    about = "Security vectors for LLM fine-tuning: generation, benchmarks and experiments"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate a reply from a model (chat template applied unless --raw).
    Generate(GenerateArgs),
    /// Measure generation speed (prefill and decoding tokens/s) and write results/benchmarks/.
    Bench(bench::BenchArgs),
    /// Evaluate a model: harmful rate, over-refusal, benign and skill accuracy, refusal vs compliance NLL.
    Evaluate(evaluate::EvaluateArgs),
    /// The method end to end: align, security vectors, attack with and without them, evaluate.
    Pipeline(pipeline::PipelineArgs),
    /// Run a declarative experiment (RON): its sweep, resumably, with tables and plots.
    /// `secvec-experiments x.ron` is short for `secvec-experiments run x.ron`.
    Run(experiment::RunArgs),
    /// Training and generation speed and peak memory for SmolLM2-135M's and a ~1B Llama's shape
    /// (random weights), each case in its own process → results/benchmarks/suite-<backend>.{json,md}.
    BenchSuite(bench_suite::SuiteArgs),
    /// Correctness on a backend (for GPU machines without `cargo test`): tiny checkpoints vs
    /// transformers, a SmolLM2-shaped model vs the CPU, a short security-vector training vs the CPU.
    Check(check::CheckArgs),
}

/// Options shared by commands that load a model.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// A known model name (smollm2-135m-instruct), a .gguf file, or a Hugging Face directory.
    #[arg(long, default_value = "smollm2-135m-instruct")]
    model: String,
    /// Compute backend (flex is the fastest CPU backend measured here; see results/benchmarks).
    #[arg(long, value_enum, default_value_t = BackendKind::Flex)]
    backend: BackendKind,
    /// Compute precision: f32, or bf16 / f16 mixed precision (half-precision matrix products,
    /// f32 weights). Needs a backend with half kernels (flex, cuda; not ndarray).
    #[arg(long, default_value = "f32")]
    dtype: secvec_models::Precision,
    /// Cache directory for fetched models (default: $SECVEC_CACHE_DIR or ~/.cache/secvec).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

#[derive(clap::Args, Debug, Clone)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The user message (repeat for a batch of prompts).
    #[arg(long, required = true)]
    prompt: Vec<String>,
    /// A system message (default: the chat template's own).
    #[arg(long)]
    system: Option<String>,
    /// Use the prompt text as is, without the chat template.
    #[arg(long)]
    raw: bool,
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 means greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Nucleus mass for sampling.
    #[arg(long, default_value_t = 0.9)]
    top_p: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
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

impl Job for GenerateArgs {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device, backend: BackendKind) -> Result<()> {
        let (_, loaded) = self
            .model
            .load_for_inference::<B::InnerBackend>(&device, backend)?;
        let tok = &loaded.tokenizer;
        let prompts = self
            .prompt
            .iter()
            .map(|p| {
                let text = if self.raw {
                    p.clone()
                } else {
                    let mut msgs = Vec::new();
                    if let Some(s) = &self.system {
                        msgs.push(Message::system(s));
                    }
                    msgs.push(Message::user(p));
                    tok.apply_chat_template(&msgs, true)?
                };
                Ok(tok.encode(&text)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let sampling = if self.temperature > 0.0 {
            Sampling::TopP {
                temperature: self.temperature,
                top_p: self.top_p,
                seed: self.seed,
            }
        } else {
            Sampling::Greedy
        };
        let config = GenerationConfig {
            max_new_tokens: self.max_new_tokens,
            sampling,
            stop_tokens: tok.special.eos.clone(),
        };
        let t1 = Instant::now();
        let outputs = generate(&loaded.model, &prompts, tok.pad_id(), &config)?;
        let secs = t1.elapsed().as_secs_f64();
        let new_tokens: usize = outputs.iter().map(|o| o.tokens.len()).sum();
        for (prompt, out) in self.prompt.iter().zip(&outputs) {
            if self.prompt.len() > 1 {
                println!("### {prompt}");
            }
            println!("{}", tok.decode(&out.tokens, true)?);
        }
        eprintln!(
            "{new_tokens} new tokens in {secs:.2}s ({:.1} tokens/s)",
            new_tokens as f64 / secs.max(1e-9)
        );
        Ok(())
    }
}

fn main() -> Result<()> {
    if std::env::var("SECVEC_MALLOC").map_or(true, |v| v != "system") {
        secvec_models::kernels::tune_allocator();
    }
    // `secvec-experiments experiments/x.ron [...]` is `secvec-experiments run experiments/x.ron [...]`.
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv
        .get(1)
        .is_some_and(|a| a.to_string_lossy().ends_with(".ron"))
    {
        argv.insert(1, "run".into());
    }
    let cli = Cli::parse_from(argv);
    match cli.command {
        Command::Generate(args) => dispatch(args.model.backend, args),
        Command::Bench(args) => dispatch(args.model.backend, args),
        Command::Evaluate(args) => dispatch(args.model.backend, args),
        Command::Pipeline(args) => args.run(),
        Command::Run(args) => experiment::run(args),
        Command::BenchSuite(args) => bench_suite::run(args),
        Command::Check(args) => check::run(args),
    }
}
