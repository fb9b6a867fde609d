//! `secvec-experiments fuzz`: mutation fuzzing of every reader of untrusted files (issue #15):
//! GGUF (header, metadata, tensor table, dequantisation, tokenizer, config), safetensors
//! checkpoints and their index, Hugging Face and PEFT configs, experiment files and each data
//! format.
//!
//! Each execution writes one mutated input to a file and runs the target's reader on it. The
//! reader may accept or reject the input; a **failure** is a panic, or a peak of memory held at
//! once above `ALLOC_FACTOR` × the input's size + `ALLOC_SLACK` (an allocation sized by a
//! count in the file rather than by the file). Failures are written to
//! `<out>/fuzz-failures/<target>-<execution>.bin` and every execution can be made again from its
//! number (`--replay`). The record `<out>/fuzz.json` keeps one entry per target, replaced when
//! that target runs again.

pub mod alloc;
mod mutate;
mod targets;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::experiment::record::{git_revision, write_json};
use targets::{SeedPlaces, Target};

/// Memory a reader may hold at once, relative to its input (dequantising 4-bit weights to f32
/// alone is 7×; tokenizer tables several times their strings).
const ALLOC_FACTOR: usize = 256;
const ALLOC_SLACK: usize = 16 << 20;
/// Failures kept in the record per target (all are written to `fuzz-failures/`).
const FAILURES_KEPT: usize = 20;

#[derive(clap::Args, Debug)]
pub struct FuzzArgs {
    /// Targets to run (repeatable; default: all): gguf, safetensors, safetensors-index,
    /// hf-config, peft-config, ron, jsonl, chat-jsonl, alpaca, advbench, beavertails.
    #[arg(long = "target")]
    targets: Vec<String>,
    /// Executions per target.
    #[arg(long, default_value_t = 1_000_000)]
    executions: u64,
    /// Seed of the mutations.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Folder of the record (`fuzz.json`) and of failing inputs (`fuzz-failures/`).
    #[arg(long, default_value = "results/reliability")]
    out: PathBuf,
    /// Reference outputs with the tiny HF checkpoints and the PEFT adapter (seeds; skipped when
    /// absent).
    #[arg(long, default_value = "../shared/reference")]
    reference: PathBuf,
    /// The shipped experiment files (seeds of the `ron` target).
    #[arg(long, default_value = "experiments")]
    experiments: PathBuf,
    /// An AdvBench CSV (seed of the `advbench` target; skipped when absent).
    #[arg(long, default_value = "../shared/data/advbench_harmful_behaviors.csv")]
    advbench: PathBuf,
    /// A GGUF whose metadata and tensor table, shrunk, seed the `gguf` target (default: the
    /// cached SmolLM2-135M-Instruct, when it is in the cache).
    #[arg(long)]
    gguf: Option<PathBuf>,
    /// Run only this execution of the (single) target, print what the reader did and keep the
    /// input in `fuzz-failures/`.
    #[arg(long)]
    replay: Option<u64>,
}

/// One target's entry in `fuzz.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetRecord {
    pub target: String,
    pub executions: u64,
    pub panics: u64,
    /// Executions whose peak memory exceeded the bound.
    pub allocation_failures: u64,
    pub seconds: f64,
    /// Inputs the reader accepted / rejected with an error.
    pub accepted: u64,
    pub rejected: u64,
    /// The slowest execution, in milliseconds (a reader that hangs shows here).
    pub slowest_ms: f64,
    pub seed: u64,
    /// Where the seed inputs came from.
    pub seeds: Vec<String>,
    pub failures: Vec<Failure>,
    pub git_revision: String,
    pub command: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failure {
    pub execution: u64,
    pub kind: String,
    pub message: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    /// How to rerun every target.
    rerun: String,
    targets: Vec<TargetRecord>,
}

thread_local! {
    /// The last panic on this thread, as the quiet hook recorded it. Per thread: the hook runs
    /// on the panicking thread, and tests fuzz beside each other in one process.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// What one execution did.
enum Outcome {
    Accepted,
    Rejected(String),
    Panicked(String),
}

/// Runs the target on one input in `dir`; returns the outcome, the peak memory held and the
/// seconds taken.
fn execute(target: &Target, dir: &Path, input: &[u8]) -> Result<(Outcome, usize, f64)> {
    let path = dir.join(target.file_name);
    std::fs::write(&path, input).with_context(|| format!("writing {}", path.display()))?;
    let start = Instant::now();
    alloc::arm();
    let result = std::panic::catch_unwind(|| (target.run)(&path, input));
    let peak = alloc::disarm();
    let seconds = start.elapsed().as_secs_f64();
    let outcome = match result {
        Ok(Ok(())) => Outcome::Accepted,
        Ok(Err(e)) => Outcome::Rejected(e),
        Err(payload) => {
            let message = LAST_PANIC
                .with_borrow_mut(Option::take)
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            Outcome::Panicked(message)
        }
    };
    Ok((outcome, peak, seconds))
}

/// The input of one execution.
fn input_of(target: &Target, seeds: &targets::Seeds, seed: u64, execution: u64) -> Vec<u8> {
    use rand::Rng;
    let mut rng = mutate::rng_for(seed, target.name, execution);
    let a = rng.random_range(0..seeds.len());
    let b = rng.random_range(0..seeds.len());
    mutate::mutate(&seeds[a].1, &seeds[b].1, target.dict, &mut rng)
}

/// A temporary folder path no other call in this process gets (`secvec-fuzz-<what>-<pid>-<n>`):
/// tests fuzz beside each other in one process, and a folder shared between calls was removed
/// by the first to finish while another still wrote into it.
fn own_temp_dir(what: &str) -> PathBuf {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("secvec-fuzz-{what}-{}-{call}", std::process::id()))
}

/// A folder of its own for one target's inputs.
fn work_dir(target: &Target) -> Result<PathBuf> {
    let dir = own_temp_dir(target.name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    targets::prepare(target.name, &dir)?;
    Ok(dir)
}

/// Fuzzes one target for `executions` inputs; failing inputs go to `failures_dir`.
fn run_target(
    target: &Target,
    places: &SeedPlaces,
    executions: u64,
    seed: u64,
    failures_dir: &Path,
    progress: bool,
) -> Result<TargetRecord> {
    let seeds = (target.seeds)(places).with_context(|| format!("seeds of `{}`", target.name))?;
    let dir = work_dir(target)?;
    let bar = if progress {
        let bar = ProgressBar::new(executions);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>18} {wide_bar} {pos}/{len} ({per_sec}, ETA {eta}) {msg}",
            )
            .expect("valid template"),
        );
        bar.set_prefix(target.name);
        bar
    } else {
        ProgressBar::hidden()
    };
    let start = Instant::now();
    let mut rec = TargetRecord {
        target: target.name.into(),
        executions: 0,
        panics: 0,
        allocation_failures: 0,
        seconds: 0.0,
        accepted: 0,
        rejected: 0,
        slowest_ms: 0.0,
        seed,
        seeds: seeds.iter().map(|(n, _)| n.clone()).collect(),
        failures: Vec::new(),
        git_revision: git_revision(),
        command: String::new(),
    };
    for execution in 0..executions {
        let input = input_of(target, &seeds, seed, execution);
        let (outcome, peak, seconds) = execute(target, &dir, &input)?;
        rec.executions += 1;
        rec.slowest_ms = rec.slowest_ms.max(seconds * 1e3);
        let bound = ALLOC_FACTOR * input.len() + ALLOC_SLACK;
        let mut failure = None;
        match outcome {
            Outcome::Accepted => rec.accepted += 1,
            Outcome::Rejected(_) => rec.rejected += 1,
            Outcome::Panicked(m) => {
                rec.panics += 1;
                failure = Some(("panic", m));
            }
        }
        if peak > bound && failure.is_none() {
            rec.allocation_failures += 1;
            failure = Some((
                "allocation",
                format!(
                    "held {peak} bytes at once for an input of {} bytes (bound {bound})",
                    input.len()
                ),
            ));
        }
        if let Some((kind, message)) = failure {
            std::fs::create_dir_all(failures_dir)?;
            let path = failures_dir.join(format!("{}-{execution}.bin", target.name));
            std::fs::write(&path, &input).with_context(|| format!("writing {}", path.display()))?;
            bar.println(format!(
                "{}: execution {execution}: {kind}: {message} (input: {})",
                target.name,
                path.display()
            ));
            if rec.failures.len() < FAILURES_KEPT {
                rec.failures.push(Failure {
                    execution,
                    kind: kind.into(),
                    message,
                });
            }
        }
        if execution % 256 == 0 {
            bar.set_position(execution);
            bar.set_message(format!("{} panics", rec.panics + rec.allocation_failures));
        }
    }
    bar.finish_and_clear();
    rec.seconds = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rec)
}

/// Installs a panic hook that keeps the message and location instead of printing them; the
/// returned guard puts the previous hook back.
type PanicHook = Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send>;
struct QuietPanics(Option<PanicHook>);

impl QuietPanics {
    fn install() -> Self {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(|info| {
            LAST_PANIC.set(Some(info.to_string()));
        }));
        QuietPanics(Some(previous))
    }
}

impl Drop for QuietPanics {
    fn drop(&mut self) {
        // A panicking thread may not change the hook (that is a second panic, which aborts the
        // process and hides the first one's message). The quiet hook then stays, and the panic in
        // flight, which it recorded instead of printing, is printed here.
        if std::thread::panicking() {
            if let Some(message) = LAST_PANIC.with_borrow(Clone::clone) {
                eprintln!("{message}");
            }
            return;
        }
        if let Some(previous) = self.0.take() {
            std::panic::set_hook(previous);
        }
    }
}

impl FuzzArgs {
    fn places(&self) -> SeedPlaces {
        let existing = |p: &Path| p.exists().then(|| p.to_path_buf());
        let gguf = self.gguf.clone().or_else(|| {
            let cache = secvec_models::registry::cache_dir(None);
            secvec_models::registry::known_model("smollm2-135m-instruct")
                .map(|m| m.cached_path(&cache))
                .filter(|p| p.is_file())
        });
        SeedPlaces {
            reference: existing(&self.reference),
            experiments: existing(&self.experiments),
            advbench: existing(&self.advbench),
            gguf,
        }
    }

    pub fn run(self) -> Result<()> {
        let all = targets::all();
        let names: Vec<&str> = all.iter().map(|t| t.name).collect();
        for t in &self.targets {
            if !names.contains(&t.as_str()) {
                bail!(
                    "--target {t}: no such target (targets: {})",
                    names.join(", ")
                );
            }
        }
        let chosen: Vec<&Target> = all
            .iter()
            .filter(|t| self.targets.is_empty() || self.targets.iter().any(|n| n == t.name))
            .collect();
        let places = self.places();
        let failures_dir = self.out.join("fuzz-failures");
        let _quiet = QuietPanics::install();

        if let Some(execution) = self.replay {
            let [target] = chosen.as_slice() else {
                bail!("--replay needs exactly one --target");
            };
            let seeds = (target.seeds)(&places)?;
            let input = input_of(target, &seeds, self.seed, execution);
            let dir = work_dir(target)?;
            let (outcome, peak, seconds) = execute(target, &dir, &input)?;
            std::fs::create_dir_all(&failures_dir)?;
            let path = failures_dir.join(format!("{}-{execution}.bin", target.name));
            std::fs::write(&path, &input)?;
            let what = match outcome {
                Outcome::Accepted => "accepted".to_string(),
                Outcome::Rejected(e) => format!("rejected: {e}"),
                Outcome::Panicked(m) => format!("PANICKED: {m}"),
            };
            println!(
                "{} execution {execution}: {what}\n  {} input bytes, peak {peak} bytes held, {:.1} ms; input kept in {}",
                target.name,
                input.len(),
                seconds * 1e3,
                path.display()
            );
            let _ = std::fs::remove_dir_all(&dir);
            return Ok(());
        }

        std::fs::create_dir_all(&self.out)
            .with_context(|| format!("creating {}", self.out.display()))?;
        let record_path = self.out.join("fuzz.json");
        let mut record: Record = match std::fs::read_to_string(&record_path) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("reading {}", record_path.display()))?,
            Err(_) => Record::default(),
        };
        record.rerun = "cargo run --release -p secvec-experiments -- fuzz [--target NAME] \
                        [--executions N] [--seed S]; one execution: --target NAME --replay N"
            .into();
        let command = std::env::args().collect::<Vec<_>>().join(" ");
        let mut failed = Vec::new();
        for target in chosen {
            let mut rec = run_target(
                target,
                &places,
                self.executions,
                self.seed,
                &failures_dir,
                true,
            )?;
            rec.command = command.clone();
            println!(
                "{:>18}: {} executions in {:.0} s, {} panics, {} over the memory bound ({} accepted, {} rejected; slowest {:.1} ms)",
                rec.target,
                rec.executions,
                rec.seconds,
                rec.panics,
                rec.allocation_failures,
                rec.accepted,
                rec.rejected,
                rec.slowest_ms
            );
            if rec.panics + rec.allocation_failures > 0 {
                failed.push(rec.target.clone());
            }
            record.targets.retain(|r| r.target != rec.target);
            record.targets.push(rec);
            record.targets.sort_by(|a, b| a.target.cmp(&b.target));
            // Written after every target, so a long run keeps what it finished.
            write_json(&record_path, &record)?;
        }
        println!("record: {}", record_path.display());
        if !failed.is_empty() {
            bail!(
                "failures in {} (inputs in {})",
                failed.join(", "),
                failures_dir.display()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seeds that exist in every checkout (no workplace files, no model download).
    fn places() -> SeedPlaces {
        SeedPlaces {
            reference: None,
            experiments: Some(PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../experiments"
            ))),
            advbench: None,
            gguf: None,
        }
    }

    #[test]
    fn every_target_survives_a_short_run_without_panics_or_unbounded_memory() {
        let quiet = QuietPanics::install();
        let failures =
            std::env::temp_dir().join(format!("secvec-fuzz-test-{}", std::process::id()));
        let records: Vec<_> = targets::all()
            .iter()
            .map(|target| run_target(target, &places(), 400, 1, &failures, false))
            .collect();
        // The usual hook is back before anything is asserted, so a failure prints as usual.
        drop(quiet);
        for (target, rec) in targets::all().iter().zip(records) {
            let rec = rec.unwrap();
            assert_eq!(rec.executions, 400);
            assert_eq!(
                rec.panics + rec.allocation_failures,
                0,
                "{}: {:?}",
                target.name,
                rec.failures
            );
            // The seeds parse, so some mutated inputs are still accepted: the run reaches past
            // the first check (except for formats where any edit breaks the file).
            assert!(rec.accepted + rec.rejected == 400, "{}", target.name);
        }
    }

    #[test]
    fn runs_of_one_target_at_once_keep_to_their_own_folders() {
        // Tests fuzz beside each other in one process; the index target also writes a shard
        // (`prepare`, a synthetic safetensors file) beside each input. When the runs shared
        // their folders, one finishing removed the folder another was writing into.
        let target = targets::all()
            .into_iter()
            .find(|t| t.name == "safetensors-index")
            .unwrap();
        let failures =
            std::env::temp_dir().join(format!("secvec-fuzz-twice-{}", std::process::id()));
        std::thread::scope(|s| {
            let runs: Vec<_> = (0..4u64)
                .map(|i| {
                    let (target, failures) = (&target, &failures);
                    // Different lengths, so that some runs end while others still write.
                    s.spawn(move || run_target(target, &places(), 20 + 40 * i, i, failures, false))
                })
                .collect();
            for run in runs {
                let rec = run.join().unwrap().unwrap();
                assert_eq!(
                    rec.panics + rec.allocation_failures,
                    0,
                    "{:?}",
                    rec.failures
                );
            }
        });
    }

    #[test]
    fn a_reader_that_panics_or_trusts_a_count_is_caught() {
        // A reader that sizes a buffer by the file's first u32 and indexes by its fifth byte.
        fn seeds(_: &SeedPlaces) -> Result<targets::Seeds> {
            Ok(vec![("eight bytes".into(), vec![4, 0, 0, 0, 1, 2, 3, 4])])
        }
        fn run(_: &Path, bytes: &[u8]) -> std::result::Result<(), String> {
            let head: [u8; 4] = bytes
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .ok_or("short")?;
            // Zeroed, so the pages are never touched (the count is what matters, not the time).
            let n = (u32::from_le_bytes(head) as usize).min(1 << 26);
            let buf = vec![0u8; n];
            let table = [0u8; 16];
            let i = *bytes.get(4).ok_or("short")? as usize;
            std::hint::black_box((buf, table[i]));
            Ok(())
        }
        let target = Target {
            name: "planted",
            file_name: "planted.bin",
            dict: &[],
            seeds,
            run,
        };
        let _quiet = QuietPanics::install();
        let failures =
            std::env::temp_dir().join(format!("secvec-fuzz-planted-{}", std::process::id()));
        let rec = run_target(&target, &places(), 3000, 0, &failures, false).unwrap();
        assert!(rec.panics > 0, "{rec:?}");
        assert!(rec.allocation_failures > 0, "{rec:?}");
        let panic = rec.failures.iter().find(|f| f.kind == "panic").unwrap();
        assert!(panic.message.contains("index out of bounds"), "{panic:?}");
        // The failing input is kept, and is the input of that execution.
        let kept =
            std::fs::read(failures.join(format!("planted-{}.bin", panic.execution))).unwrap();
        assert_eq!(
            kept,
            input_of(&target, &seeds(&places()).unwrap(), 0, panic.execution)
        );
        let _ = std::fs::remove_dir_all(&failures);
    }

    #[test]
    fn every_seed_is_accepted_by_its_reader() {
        // A seed the reader rejects would leave the fuzzer testing only the first error path.
        for target in targets::all() {
            let dir = work_dir(&target).unwrap();
            for (name, bytes) in (target.seeds)(&places()).unwrap() {
                let (outcome, _, _) = execute(&target, &dir, &bytes).unwrap();
                match outcome {
                    Outcome::Accepted => {}
                    Outcome::Rejected(e) => panic!("{}: seed {name} rejected: {e}", target.name),
                    Outcome::Panicked(m) => panic!("{}: seed {name} panicked: {m}", target.name),
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
