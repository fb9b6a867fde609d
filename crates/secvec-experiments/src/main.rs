//! `secvec-experiments`: the secvec command line.

mod backend;
mod bench;
mod bench_suite;
mod bench_trainer;
mod check;
mod evaluate;
mod experiment;
mod fuzz;
mod generate;
mod model_args;
mod pipeline;

use anyhow::Result;
use clap::{Parser, Subcommand};

use backend::dispatch;

/// The system allocator, measured while the fuzz harness runs a reader (`fuzz::alloc`).
#[global_allocator]
static GLOBAL: fuzz::alloc::Tracking = fuzz::alloc::Tracking;
use generate::GenerateArgs;

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
    /// Mutation fuzzing of every reader of untrusted files (GGUF, safetensors, configs,
    /// experiment files, data sets): panics and unbounded memory → results/reliability/fuzz.json.
    Fuzz(fuzz::FuzzArgs),
}

/// Lets `secvec-experiments ... | head` end quietly when the reader closes the pipe, as other
/// command-line tools do, instead of panicking in `println!` (Rust ignores SIGPIPE by default, so
/// the write fails and `println!` panics on the error).
fn default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: sets one signal's disposition at start-up, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> Result<()> {
    default_sigpipe();
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
        Command::Fuzz(args) => args.run(),
    }
}
