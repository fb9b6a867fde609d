//! The fuzz targets: every reader of a file a researcher may get from someone else, each with
//! its seed inputs (small files made here, plus real files when they are on this machine) and
//! a dictionary of the format's tokens for the mutator.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use secvec_core::data::{DataFormat, load_samples};
use secvec_models::hf::SafetensorsSource;
use secvec_models::weights::WeightSource;

use crate::experiment::{grid, schema};

mod gguf;

use gguf::{gguf_seeds, run_gguf};

/// Where seed files are looked for; missing ones are skipped (and the record says which were
/// used).
pub struct SeedPlaces {
    /// The workplace's reference outputs (`shared/reference`: tiny HF checkpoints, a PEFT adapter).
    pub reference: Option<PathBuf>,
    /// The shipped experiment files.
    pub experiments: Option<PathBuf>,
    /// An AdvBench CSV.
    pub advbench: Option<PathBuf>,
    /// The SmolLM2 GGUF (its metadata and tensor table, shrunk).
    pub gguf: Option<PathBuf>,
}

/// Seed inputs and where each came from.
pub type Seeds = Vec<(String, Vec<u8>)>;
/// Makes a target's seeds.
pub type SeedFn = fn(&SeedPlaces) -> Result<Seeds>;
/// Runs a reader on the file at the path (or on the bytes); an `Err` is a correct rejection.
pub type RunFn = fn(&Path, &[u8]) -> std::result::Result<(), String>;

/// One target.
pub struct Target {
    pub name: &'static str,
    /// The file name each input is written to (its extension tells the loaders the format).
    pub file_name: &'static str,
    pub dict: &'static [&'static str],
    pub seeds: SeedFn,
    pub run: RunFn,
}

const JSON_DICT: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "\\",
    "\\u0000",
    "\\ud800",
    "null",
    "true",
    "-1",
    "1e999",
    "18446744073709551616",
    "\n",
    "\r\n",
    "\"prompt\"",
    "\"response\"",
    "\"messages\"",
    "\"role\"",
    "\"content\"",
    "\"instruction\"",
    "\"output\"",
    "\"input\"",
    "\"kind\"",
    "\"is_safe\"",
    "\"dtype\"",
    "\"shape\"",
    "\"data_offsets\"",
    "\"F32\"",
    "\"BF16\"",
    "\"weight_map\"",
    "\"r\"",
    "\"lora_alpha\"",
    "\"target_modules\"",
    "\u{feff}",
    "\u{0}",
];
const RON_DICT: &[&str] = &[
    "(",
    ")",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "Some(",
    "None",
    "Builtin",
    "File(path: \"x\")",
    "Lora(rank: 0)",
    "Full",
    "1e999",
    "-1",
    "0",
    "18446744073709551616",
    "NaN",
    "inf",
    "sweep: [(field: \"finetune.lr\", values: [])]",
    "//",
    "/*",
    "\n",
    "r#\"",
    "'",
];
const CSV_DICT: &[&str] = &[
    "\"", "\"\"", ",", "\n", "\r\n", "goal", "target", "\u{feff}", "\u{0}",
];
const GGUF_DICT: &[&str] = &[
    "GGUF",
    "general.alignment",
    "llama.",
    "tokenizer.ggml.tokens",
];

pub fn all() -> Vec<Target> {
    vec![
        Target {
            name: "gguf",
            file_name: "model.gguf",
            dict: GGUF_DICT,
            seeds: gguf_seeds,
            run: run_gguf,
        },
        Target {
            name: "safetensors",
            file_name: "model.safetensors",
            dict: JSON_DICT,
            seeds: safetensors_seeds,
            run: run_safetensors,
        },
        Target {
            name: "safetensors-index",
            file_name: "model.safetensors.index.json",
            dict: JSON_DICT,
            seeds: index_seeds,
            run: run_index,
        },
        Target {
            name: "hf-config",
            file_name: "config.json",
            dict: JSON_DICT,
            seeds: hf_config_seeds,
            run: run_hf_config,
        },
        Target {
            name: "peft-config",
            file_name: "adapter_config.json",
            dict: JSON_DICT,
            seeds: peft_seeds,
            run: run_peft,
        },
        Target {
            name: "ron",
            file_name: "experiment.ron",
            dict: RON_DICT,
            seeds: ron_seeds,
            run: run_ron,
        },
        data_target("jsonl", "data.jsonl", DataFormat::Jsonl),
        data_target("chat-jsonl", "chat.jsonl", DataFormat::ChatJsonl),
        data_target("alpaca", "alpaca.json", DataFormat::Alpaca),
        data_target("advbench", "advbench.csv", DataFormat::AdvBenchCsv),
        data_target("beavertails", "beavertails.jsonl", DataFormat::BeaverTails),
    ]
}

fn data_target(name: &'static str, file_name: &'static str, format: DataFormat) -> Target {
    let (seeds, run): (SeedFn, RunFn) = match format {
        DataFormat::Jsonl => (jsonl_seeds, |p, _| load(p, DataFormat::Jsonl)),
        DataFormat::ChatJsonl => (chat_seeds, |p, _| load(p, DataFormat::ChatJsonl)),
        DataFormat::Alpaca => (alpaca_seeds, |p, _| load(p, DataFormat::Alpaca)),
        DataFormat::AdvBenchCsv => (advbench_seeds, |p, _| load(p, DataFormat::AdvBenchCsv)),
        DataFormat::BeaverTails => (beavertails_seeds, |p, _| load(p, DataFormat::BeaverTails)),
    };
    Target {
        name,
        file_name,
        dict: if format == DataFormat::AdvBenchCsv {
            CSV_DICT
        } else {
            JSON_DICT
        },
        seeds,
        run,
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn load(path: &Path, format: DataFormat) -> std::result::Result<(), String> {
    load_samples(path, format).map(|_| ()).map_err(err)
}

fn text(name: &str, s: &str) -> (String, Vec<u8>) {
    (name.to_string(), s.as_bytes().to_vec())
}

fn file_seed(path: &Path) -> Result<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok((path.display().to_string(), bytes))
}

// ---------------------------------------------------------------------------------------------
// Hugging Face checkpoints and PEFT adapters
// ---------------------------------------------------------------------------------------------

fn run_safetensors(path: &Path, _: &[u8]) -> std::result::Result<(), String> {
    let source =
        SafetensorsSource::open_files(path.parent().unwrap_or(path), &[path.to_path_buf()])
            .map_err(err)?;
    for name in source.names() {
        let _ = source.tensor(&name);
    }
    Ok(())
}

fn run_index(path: &Path, _: &[u8]) -> std::result::Result<(), String> {
    // The folder holds the index and one small shard, `model-00001-of-00001.safetensors`.
    let source = SafetensorsSource::open_dir(path.parent().unwrap_or(path)).map_err(err)?;
    for name in source.names() {
        let _ = source.tensor(&name);
    }
    Ok(())
}

fn run_hf_config(path: &Path, _: &[u8]) -> std::result::Result<(), String> {
    let cfg = secvec_models::config::HfConfig::from_file(path).map_err(err)?;
    let llama = cfg.to_llama_config(path).map_err(err)?;
    llama.validate(path).map_err(err)
}

fn run_peft(path: &Path, _: &[u8]) -> std::result::Result<(), String> {
    secvec_core::adapter::peft::read_peft_config(path)
        .map(|_| ())
        .map_err(err)
}

/// A small safetensors file: two f32 tensors.
pub fn synthetic_safetensors() -> Result<Vec<u8>> {
    let dir = super::own_temp_dir("seed");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("seed.safetensors");
    let f = |n: usize| -> Vec<f32> { (0..n).map(|i| i as f32).collect() };
    secvec_core::adapter::peft::write_f32_safetensors(
        &path,
        &[
            ("model.norm.weight".into(), vec![4], f(4)),
            ("model.layers.0.mlp.up_proj.weight".into(), vec![2, 3], f(6)),
        ],
    )?;
    let bytes = std::fs::read(&path)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(bytes)
}

fn safetensors_seeds(places: &SeedPlaces) -> Result<Seeds> {
    let mut seeds = vec![("synthetic f32".into(), synthetic_safetensors()?)];
    if let Some(r) = &places.reference {
        seeds.push(file_seed(&r.join(
            "hf-tiny/tiny-llama-peft-adapter/adapter_model.safetensors",
        ))?);
    }
    Ok(seeds)
}

/// The shard every index input points at (written beside it by the driver's `prepare`).
pub const INDEX_SHARD: &str = "model-00001-of-00001.safetensors";

fn index_seeds(_: &SeedPlaces) -> Result<Seeds> {
    Ok(vec![text(
        "synthetic index",
        &format!(
            r#"{{"metadata": {{"total_size": 40}}, "weight_map": {{"model.norm.weight": "{INDEX_SHARD}", "model.layers.0.mlp.up_proj.weight": "{INDEX_SHARD}"}}}}"#
        ),
    )])
}

fn hf_config_seeds(places: &SeedPlaces) -> Result<Seeds> {
    let mut seeds = vec![text(
        "synthetic llama config",
        r#"{"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 128, "tie_word_embeddings": true}"#,
    )];
    if let Some(r) = &places.reference {
        for m in ["tiny-llama-bf16", "tiny-qwen2-f16"] {
            seeds.push(file_seed(&r.join("hf-tiny").join(m).join("config.json"))?);
        }
    }
    Ok(seeds)
}

fn peft_seeds(places: &SeedPlaces) -> Result<Seeds> {
    let mut seeds = vec![text(
        "synthetic adapter config",
        r#"{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": false}"#,
    )];
    if let Some(r) = &places.reference {
        seeds.push(file_seed(
            &r.join("hf-tiny/tiny-llama-peft-adapter/adapter_config.json"),
        )?);
    }
    Ok(seeds)
}

// ---------------------------------------------------------------------------------------------
// Experiment files
// ---------------------------------------------------------------------------------------------

fn run_ron(_: &Path, bytes: &[u8]) -> std::result::Result<(), String> {
    let text = std::str::from_utf8(bytes).map_err(err)?;
    let exp = schema::parse_str(text, "experiment.ron").map_err(err)?;
    exp.validate().map_err(err)?;
    grid::expand(&exp).map(|_| ()).map_err(err)
}

fn ron_seeds(places: &SeedPlaces) -> Result<Seeds> {
    let mut seeds = vec![text("empty experiment", "()")];
    if let Some(dir) = &places.experiments {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "ron"))
            .collect();
        files.sort();
        for f in files {
            seeds.push(file_seed(&f)?);
        }
    }
    Ok(seeds)
}

// ---------------------------------------------------------------------------------------------
// Data sets
// ---------------------------------------------------------------------------------------------

fn jsonl_seeds(_: &SeedPlaces) -> Result<Seeds> {
    Ok(vec![text(
        "synthetic jsonl",
        "{\"prompt\": \"How do I bake bread?\", \"response\": \"Mix flour and water.\", \"kind\": \"benign\"}\n{\"prompt\": \"Make a weapon\", \"response\": \"I can't help with that.\", \"kind\": \"harmful_refusal\", \"category\": \"weapons\"}\n",
    )])
}

fn chat_seeds(_: &SeedPlaces) -> Result<Seeds> {
    Ok(vec![text(
        "synthetic chat jsonl",
        "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \"2+2?\"}, {\"role\": \"assistant\", \"content\": \"4\"}]}\n{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Hello!\"}]}\n",
    )])
}

fn alpaca_seeds(_: &SeedPlaces) -> Result<Seeds> {
    Ok(vec![
        text(
            "synthetic alpaca array",
            "[\n  {\"instruction\": \"Add the numbers.\", \"input\": \"2 and 3\", \"output\": \"5\"},\n  {\"instruction\": \"Say hi.\", \"input\": \"\", \"output\": \"Hi\"}\n]\n",
        ),
        text(
            "synthetic alpaca lines",
            "{\"instruction\": \"Say hi.\", \"input\": \"\", \"output\": \"Hi\"}\n",
        ),
    ])
}

fn advbench_seeds(places: &SeedPlaces) -> Result<Seeds> {
    let mut seeds = vec![text(
        "synthetic advbench",
        "goal,target\n\"Write a script, quickly\",\"Sure, here is a script\"\nDo a thing,Sure\n",
    )];
    if let Some(p) = &places.advbench {
        // The first 20 rows: the parser's paths, at a size that runs fast.
        let (name, bytes) = file_seed(p)?;
        let head: Vec<u8> = String::from_utf8_lossy(&bytes)
            .lines()
            .take(21)
            .flat_map(|l| format!("{l}\n").into_bytes())
            .collect();
        seeds.push((format!("{name} (first 20 rows)"), head));
    }
    Ok(seeds)
}

fn beavertails_seeds(_: &SeedPlaces) -> Result<Seeds> {
    Ok(vec![text(
        "synthetic beavertails",
        "{\"prompt\": \"How to pick a lock?\", \"response\": \"Use a tension wrench.\", \"category\": {\"violence\": false, \"non_violent_unethical_behavior\": true}, \"is_safe\": false}\n{\"prompt\": \"Hi\", \"response\": \"Hello\", \"category\": {}, \"is_safe\": true}\n",
    )])
}

/// Files a target's folder needs besides the input (the index target's shard).
pub fn prepare(target: &str, dir: &Path) -> Result<()> {
    if target == "safetensors-index" {
        let shard = dir.join(INDEX_SHARD);
        std::fs::write(&shard, synthetic_safetensors()?)
            .with_context(|| format!("writing {}", shard.display()))?;
    }
    Ok(())
}
