//! The experiment runner end to end on the tiny Llama fixture: a sweep runs, writes its tables and
//! plots, survives being killed (SIGKILL) or aborted mid-run, and never recomputes or loses a
//! finished run or stage.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_secvec-experiments")
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama-bf16")
}

/// A fresh folder holding `tiny.ron` with `ron` in it.
fn scratch_with(tag: &str, ron: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("secvec-exp-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tiny.ron");
    std::fs::write(&file, ron).unwrap();
    (dir, file)
}

/// A fresh folder with an experiment file of 4 runs on the tiny model.
fn setup(tag: &str, harmful: usize) -> (PathBuf, PathBuf) {
    scratch_with(
        tag,
        &format!(
            r#"// a tiny sweep
(
  model: "{model}",
  max_len: 48,
  align: Some((refusals: 8, benign: 8, epochs: 1, batch_size: 4)),
  security_vectors: (samples: 8, epochs: 1, batch_size: 4),
  finetune: (harmful: {harmful}, skill: 8, skill_facts: 4, batch_size: 4),
  evaluate: (samples: 8, max_new_tokens: 8, checkpoints: [Aligned, VectorsOn]),
  sweep: [
    (field: "security_vectors.samples", values: [0, 8], name: "sv"),
    (field: "finetune.lr", values: [1e-4, 1e-3], name: "attack_lr", pool: true),
  ],
)
"#,
            model = fixture().display()
        ),
    )
}

fn run(dir: &Path, file: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.arg(file)
        .args(["--results", dir.join("results").to_str().unwrap()])
        .args(extra)
        .env("SECVEC_CACHE_DIR", dir.join("cache"))
        .current_dir(dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// The folder of the single run of `tiny.ron` in the scratch folder `dir`, whatever its name.
fn only_run_dir(dir: &Path) -> PathBuf {
    let mut runs: Vec<PathBuf> = std::fs::read_dir(dir.join("results/tiny/runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs.remove(0)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The process failed and said `needle` on stderr.
fn assert_fails_with(out: &Output, needle: &str) {
    assert!(!out.status.success(), "expected a failure: {}", stderr(out));
    assert!(stderr(out).contains(needle), "{}", stderr(out));
}

fn read_metrics(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The `stage` names of a metrics.json, in order.
fn stage_names(m: &serde_json::Value) -> Vec<String> {
    m["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap().to_string())
        .collect()
}

const RUNS: [&str; 4] = [
    "sv=0_attack_lr=0.0001",
    "sv=0_attack_lr=0.001",
    "sv=8_attack_lr=0.0001",
    "sv=8_attack_lr=0.001",
];

fn runs_dir(dir: &Path) -> PathBuf {
    dir.join("results/tiny/runs")
}

#[test]
fn sweep_writes_runs_tables_and_plots_and_dry_run_lists_state() {
    let (dir, file) = setup("sweep", 8);
    let out = run(&dir, &file, &["--dry-run"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listing = String::from_utf8_lossy(&out.stdout);
    for r in RUNS {
        assert!(
            listing.contains(r) && listing.contains("pending"),
            "{listing}"
        );
    }

    let out = run(&dir, &file, &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let exp = dir.join("results/tiny");
    for r in RUNS {
        let m = read_metrics(&exp.join("runs").join(r).join("metrics.json"));
        assert_eq!(m["run"], r);
        assert_eq!(m["backend"], "flex");
        assert!(m["git_revision"].as_str().is_some_and(|s| !s.is_empty()));
        let stages = stage_names(&m);
        if r.starts_with("sv=0") {
            // No vectors: the `active` arm is the plain attack, not trained twice.
            assert_eq!(stages, ["aligned", "attacked-off", "attacked-active"]);
            assert_eq!(m["stages"][2]["same_as"], "attacked-off");
            assert_eq!(m["stages"][2]["metrics"], m["stages"][1]["metrics"]);
        } else {
            assert_eq!(
                stages,
                ["aligned", "vectors-on", "attacked-off", "attacked-active"]
            );
        }
        let hr = &m["stages"][1]["metrics"]["harmful_rate"];
        assert_eq!(hr["total"], 8);
        assert!(hr["ci95"][0].as_f64().unwrap() <= hr["rate"].as_f64().unwrap());
    }
    // The alignment is trained once and reused by the other three runs.
    let log = stderr(&out);
    assert_eq!(
        log.matches("[align] training on 16 samples").count(),
        1,
        "{log}"
    );
    assert_eq!(log.matches("[align] reusing").count(), 3, "{log}");
    // The attack without vectors does not depend on them: each learning rate trains it once, and
    // the run with vectors evaluates the same model (same metrics, same answers).
    assert_eq!(log.matches("[attack-off] reusing").count(), 2, "{log}");
    assert_eq!(
        log.matches("[attacked-off] fine-tuning").count(),
        2,
        "{log}"
    );
    for lr in ["0.0001", "0.001"] {
        let off = |sv: &str| {
            let run = exp.join("runs").join(format!("sv={sv}_attack_lr={lr}"));
            let m = read_metrics(&run.join("metrics.json"));
            let rec = m["stages"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["stage"] == "attacked-off")
                .unwrap()
                .clone();
            let answers = std::fs::read(run.join("generations-attacked-off.jsonl")).unwrap();
            (
                rec["metrics"].clone(),
                rec["training"]["final_loss"].clone(),
                answers,
            )
        };
        assert_eq!(off("0"), off("8"), "{lr}");
    }
    // Vectors from 8 samples are trained once, reused by the second learning rate.
    assert_eq!(
        log.matches("[security vectors] training").count(),
        1,
        "{log}"
    );

    let csv = std::fs::read_to_string(exp.join("summary.csv")).unwrap();
    let header = csv.lines().next().unwrap();
    assert!(
        header.starts_with("run,sv,attack_lr,stage,arm,same_as,harmful_rate,"),
        "{header}"
    );
    // 2 runs × 3 stages + 2 runs × 4 stages.
    assert_eq!(csv.lines().count(), 1 + 14, "{csv}");
    let md = std::fs::read_to_string(exp.join("summary.md")).unwrap();
    assert!(md.contains("runs finished: 4/4"), "{md}");
    assert!(md.contains("| sv | attack_lr |"), "{md}");
    // The summary pools over the attack's rate (`pool: true`), once per number of vector samples
    // (different treatments are never summed), and each row names the run worst for the defence:
    // for the harmful rate with vectors, the run whose rate is the highest of its section in
    // summary.csv.
    assert_eq!(md.matches("pooled over the").count(), 2, "{md}");
    let section = &md[md
        .find("## sv=8: pooled over the 2 runs")
        .unwrap_or_else(|| panic!("{md}"))..];
    let row = section
        .lines()
        .find(|l| l.starts_with("| harmful rate | attack with vectors |"))
        .unwrap_or_else(|| panic!("{md}"));
    let cell = row.trim_end_matches('|').rsplit('|').next().unwrap().trim();
    let (worst_run, _) = cell.split_once(": ").unwrap_or_else(|| panic!("{row}"));
    let active: Vec<(&str, f64)> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f[3] == "attacked-active" && f[1] == "8")
        .map(|f| (f[0], f[6].parse().unwrap()))
        .collect();
    assert_eq!(active.len(), 2, "{csv}");
    let highest = active.iter().map(|a| a.1).fold(f64::MIN, f64::max);
    let of_worst = active.iter().find(|a| a.0 == worst_run).map(|a| a.1);
    assert_eq!(of_worst, Some(highest), "{row}\n{csv}");
    for axis in ["sv", "attack_lr"] {
        for metric in [
            "harmful_rate",
            "over_refusal",
            "benign_accuracy",
            "skill_accuracy",
        ] {
            let svg =
                std::fs::read_to_string(exp.join(format!("plot-{axis}-{metric}.svg"))).unwrap();
            assert!(
                svg.contains("<svg") && svg.contains("with vectors"),
                "{axis} {metric}"
            );
        }
    }
    let out = run(&dir, &file, &["--dry-run"], &[]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert_eq!(listing.matches("finished").count(), 4, "{listing}");

    // --only runs one run; an unknown name is an error that lists the runs.
    let out = run(&dir, &file, &["--only", "nope"], &[]);
    assert_fails_with(&out, "sv=8_attack_lr=0.001");
    let _ = std::fs::remove_dir_all(&dir);
}

fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for r in RUNS {
        let run = runs_dir(dir).join(r);
        let p = run.join("metrics.json");
        if p.is_file() {
            files.push((p.clone(), std::fs::read(&p).unwrap()));
        }
        if let Ok(rd) = std::fs::read_dir(run.join("stages")) {
            for e in rd
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            {
                files.push((e.path(), std::fs::read(e.path()).unwrap()));
            }
        }
    }
    files
}

#[test]
fn a_killed_sweep_resumes_without_losing_or_recomputing_finished_runs() {
    // More harmful samples make each run long enough to kill in the middle of the sweep.
    let (dir, file) = setup("kill", 64);
    let mut child = Command::new(bin())
        .arg(&file)
        .args(["--results", dir.join("results").to_str().unwrap()])
        .env("SECVEC_CACHE_DIR", dir.join("cache"))
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let first = runs_dir(&dir).join(RUNS[0]).join("metrics.json");
    let t = Instant::now();
    while !first.is_file() {
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "the first run never finished"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the sweep ended before the first run finished?"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    let last = runs_dir(&dir).join(RUNS[3]).join("metrics.json");
    assert!(
        !last.is_file(),
        "the sweep finished before it could be killed; make the runs longer"
    );

    // Everything on disk is whole: every metrics.json and stage record parses.
    let before = snapshot(&dir);
    assert!(!before.is_empty());
    for (p, bytes) in &before {
        serde_json::from_slice::<serde_json::Value>(bytes)
            .unwrap_or_else(|e| panic!("{} is not whole JSON after the kill: {e}", p.display()));
    }

    let out = run(&dir, &file, &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = stderr(&out);
    assert!(
        log.contains(&format!("{} — finished earlier, kept", RUNS[0])),
        "{log}"
    );
    // Nothing finished before the kill was rewritten.
    for (p, bytes) in &before {
        assert_eq!(
            &std::fs::read(p).unwrap(),
            bytes,
            "{} changed on resume",
            p.display()
        );
    }
    for r in RUNS {
        assert!(
            runs_dir(&dir).join(r).join("metrics.json").is_file(),
            "{r} not finished"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_run_aborted_mid_way_keeps_its_finished_stages() {
    let (dir, file) = setup("abort", 8);
    // Dies (SIGABRT) right after the first run's `attacked-off` stage is written.
    let out = run(
        &dir,
        &file,
        &["--only", RUNS[2]],
        &[("SECVEC_FAULT_AFTER_STAGE", "attacked-off")],
    );
    assert!(!out.status.success());
    let run_dir = runs_dir(&dir).join(RUNS[2]);
    assert!(!run_dir.join("metrics.json").exists());
    let off = run_dir.join("stages/attacked-off.json");
    let off_bytes = std::fs::read(&off).unwrap();
    let aligned_bytes = std::fs::read(run_dir.join("stages/aligned.json")).unwrap();

    let out = run(&dir, &file, &["--dry-run"], &[]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("partial (3 stage(s) done)"), "{listing}");

    let out = run(&dir, &file, &["--only", RUNS[2]], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = stderr(&out);
    // The finished stages are read back: the `off` arm is not trained again, `active` is.
    assert!(!log.contains("[attacked-off] fine-tuning"), "{log}");
    assert!(log.contains("[attacked-active] fine-tuning"), "{log}");
    assert!(!log.contains("[aligned]"), "{log}");
    assert_eq!(std::fs::read(&off).unwrap(), off_bytes);
    assert_eq!(
        std::fs::read(run_dir.join("stages/aligned.json")).unwrap(),
        aligned_bytes
    );
    let m = read_metrics(&run_dir.join("metrics.json"));
    assert_eq!(m["stages"].as_array().unwrap().len(), 4);

    // Editing the file so that the run means something else is refused, not silently mixed.
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("max_len: 48", "max_len: 40");
    std::fs::write(&file, text).unwrap();
    let out = run(&dir, &file, &["--only", RUNS[2]], &[]);
    assert_fails_with(&out, "different configuration");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_files_are_errors_with_file_line_and_column() {
    let dir = std::env::temp_dir().join(format!("secvec-exp-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.ron");
    std::fs::write(&file, "(\n  seed: 1,\n  finetune: (harmfull: 10),\n)\n").unwrap();
    let out = Command::new(bin())
        .arg(&file)
        .arg("--dry-run")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("bad.ron:3:"), "{e}");
    assert!(e.contains("harmfull"), "{e}");
    assert!(!e.contains("panicked"), "{e}");
    let out = Command::new(bin())
        .arg(dir.join("missing.ron"))
        .output()
        .unwrap();
    assert_fails_with(&out, "missing.ron");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_shipped_experiment_file_parses_and_expands() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "ron") {
            let out = Command::new(bin())
                .arg(&p)
                .arg("--dry-run")
                .output()
                .unwrap();
            assert!(out.status.success(), "{}: {}", p.display(), stderr(&out));
            n += 1;
        }
    }
    assert!(n >= 6, "expected the shipped experiment files, found {n}");
}

#[test]
fn the_readme_example_is_a_valid_experiment() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let start = readme
        .find("```ron\n")
        .expect("README has a ```ron example")
        + 7;
    let len = readme[start..].find("```").unwrap();
    let dir = std::env::temp_dir().join(format!("secvec-exp-readme-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("readme-example.ron");
    std::fs::write(&file, &readme[start..start + len]).unwrap();
    let out = Command::new(bin())
        .arg(&file)
        .arg("--dry-run")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("4 run(s)"), "{listing}");
    assert!(
        listing.contains("sv_samples=10_attack_lr=0.0001"),
        "{listing}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_pipeline_command_runs_the_same_experiment_from_flags() {
    let dir = std::env::temp_dir().join(format!("secvec-exp-pipeline-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(bin())
        .args(["pipeline", "--model", fixture().to_str().unwrap()])
        .args([
            "--align-samples",
            "4",
            "--sv-samples",
            "4",
            "--attack-samples",
            "4",
        ])
        .args([
            "--skill-samples",
            "4",
            "--skill-facts",
            "2",
            "--eval-samples",
            "2",
            "--max-new-tokens",
            "2",
        ])
        .args(["--out", dir.join("pl").to_str().unwrap()])
        .env("SECVEC_CACHE_DIR", dir.join("cache"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let m = read_metrics(&dir.join("pl/runs/main/metrics.json"));
    let stages = stage_names(&m);
    assert_eq!(
        stages,
        [
            "shipped",
            "aligned",
            "vectors-on",
            "attacked-off",
            "attacked-active"
        ]
    );
    assert_eq!(m["data"]["finetune_harmful"], 4);
    assert_eq!(m["data"]["eval_skill"], 2);
    assert!(dir.join("pl/summary.md").is_file());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--dtype bf16` runs every stage in mixed precision on flex, into `<name>-bf16/`, with its own
/// cache entries; a backend without half kernels is refused up front.
#[test]
fn a_bf16_run_goes_to_its_own_folder_and_cache() {
    let (dir, file) = setup("bf16", 8);
    let out = run(&dir, &file, &["--dtype", "bf16", "--only", RUNS[2]], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let exp = dir.join("results/tiny-bf16");
    let m = read_metrics(&exp.join("runs").join(RUNS[2]).join("metrics.json"));
    assert_eq!(m["config"]["dtype"], "bf16", "{m}");
    assert!(
        !dir.join("results/tiny").exists(),
        "f32 results folder touched"
    );
    // The align and vector caches are keyed by the precision.
    for stage in ["align", "vectors"] {
        let entries: Vec<_> = std::fs::read_dir(dir.join("cache/experiments").join(stage))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(entries.len(), 1, "{stage}: {entries:?}");
        let key: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(entries[0].join("key.json")).unwrap())
                .unwrap();
        assert_eq!(key["dtype"], "bf16", "{stage}: {key}");
    }

    let out = run(
        &dir,
        &file,
        &["--backend", "ndarray", "--dtype", "f16", "--dry-run"],
        &[],
    );
    assert_fails_with(&out, "ndarray backend lacks");
}

#[test]
fn a_closed_output_pipe_ends_the_listing_without_a_panic() {
    // `--dry-run | head -1`: the reader is gone before the listing is written.
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments/attack-lr.ron");
    let results = std::env::temp_dir().join(format!("secvec-pipe-{}", std::process::id()));
    let mut child = Command::new(bin())
        .arg(&file)
        .args(["--dry-run", "--results"])
        .arg(&results)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    let _ = std::fs::remove_dir_all(&results);
}

/// `summary.csv` without the columns that measure time.
fn summary_without_timings(exp_dir: &Path) -> Vec<Vec<String>> {
    let csv = std::fs::read_to_string(exp_dir.join("summary.csv")).unwrap();
    let rows: Vec<Vec<String>> = csv
        .lines()
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    let keep: Vec<usize> = rows[0]
        .iter()
        .enumerate()
        .filter(|(_, h)| !h.contains("second"))
        .map(|(i, _)| i)
        .collect();
    rows.iter()
        .map(|r| keep.iter().map(|&i| r[i].clone()).collect())
        .collect()
}

#[test]
fn two_shards_in_two_processes_give_the_summary_of_one_process() {
    let (dir, file) = setup("shards", 8);
    let command = |results: &str, cache: &str, extra: &[&str]| {
        let mut cmd = Command::new(bin());
        cmd.arg(&file)
            .args(["--results", dir.join(results).to_str().unwrap()])
            .args(extra)
            .env("SECVEC_CACHE_DIR", dir.join(cache))
            .env_remove("SLURM_ARRAY_TASK_ID")
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    };
    let one = command("one", "cache-one", &[]).output().unwrap();
    assert!(one.status.success(), "{}", stderr(&one));

    // Two shards at once on one results folder and one stage cache (both need the alignment and
    // the vectors).
    let shards: Vec<_> = ["0/2", "1/2"]
        .iter()
        .map(|s| {
            command("two", "cache-two", &["--shard", s])
                .spawn()
                .unwrap()
        })
        .collect();
    let mut logs = Vec::new();
    for child in shards {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        logs.push(stderr(&out));
    }
    assert!(
        logs[0].contains("shard 0/2: 2 of the 4 runs"),
        "{}",
        logs[0]
    );
    // Round robin over the sweep's order: shard 1 has the second and fourth runs.
    assert!(
        logs[1].contains(&format!("({}, {})", RUNS[1], RUNS[3])),
        "{}",
        logs[1]
    );
    for (k, log) in logs.iter().enumerate() {
        let mine = if k == 0 {
            [RUNS[0], RUNS[2]]
        } else {
            [RUNS[1], RUNS[3]]
        };
        for r in RUNS {
            assert_eq!(
                log.contains(&format!("] {r} — running")),
                mine.contains(&r),
                "shard {k}: {log}"
            );
        }
    }
    // Each shared cached stage is trained by one shard; the other waits for it or reuses it.
    for what in ["[align] training on", "[security vectors] training on"] {
        let n: usize = logs.iter().map(|l| l.matches(what).count()).sum();
        assert_eq!(n, 1, "`{what}` in {logs:#?}");
    }
    let summarize = command("two", "cache-two", &["--summarize"])
        .output()
        .unwrap();
    assert!(summarize.status.success(), "{}", stderr(&summarize));

    let (a, b) = (dir.join("one/tiny"), dir.join("two/tiny"));
    assert_eq!(summary_without_timings(&a), summary_without_timings(&b));
    let md = std::fs::read_to_string(b.join("summary.md")).unwrap();
    assert!(md.contains("runs finished: 4/4"), "{md}");
    for r in RUNS {
        let answers = |root: &Path| {
            std::fs::read(
                root.join("runs")
                    .join(r)
                    .join("generations-attacked-off.jsonl"),
            )
            .unwrap()
        };
        assert_eq!(answers(&a), answers(&b), "{r}");
    }
    // A shard that does not exist is refused before anything runs.
    let bad = command("three", "cache-two", &["--shard", "2/2"])
        .output()
        .unwrap();
    assert_fails_with(&bad, "does not exist");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Activation-steering security vectors selected in the experiment file: the directions are
/// computed (and written to the run's folder), switched on for the `active` arm's fine-tuning,
/// and the rest of the pipeline is the LoRA vectors'.
#[test]
fn steering_vectors_run_beside_lora_vectors() {
    let (dir, file) = scratch_with(
        "steer",
        &format!(
            r#"(
  model: "{model}",
  max_len: 48,
  align: Some((refusals: 8, benign: 8, epochs: 1, batch_size: 4)),
  security_vectors: (samples: 8, kind: Steering(layers: [1], coefficient: 2.0), batch_size: 4),
  finetune: (harmful: 8, skill: 8, skill_facts: 4, batch_size: 4),
  evaluate: (samples: 8, max_new_tokens: 8, checkpoints: [VectorsOn]),
)
"#,
            model = fixture().display()
        ),
    );
    let out = run(&dir, &file, &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = stderr(&out);
    assert!(
        log.contains("steering directions from 8 compliant answers and 8 refusals (layer 1 |v|"),
        "{log}"
    );
    assert!(!log.contains("[security vectors] training"), "{log}");
    let run_dir = only_run_dir(&dir);
    // A safetensors file: an 8-byte header length, a JSON header naming one tensor per layer.
    let st = std::fs::read(run_dir.join("steering-vectors.safetensors")).unwrap();
    let n = u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&st[8..8 + n]).unwrap();
    assert_eq!(header["layers.1"]["dtype"], "F32", "{header}");
    assert_eq!(
        st.len(),
        8 + n + 4 * 32,
        "one f32 per unit of the tiny model's 32"
    );
    let m = read_metrics(&run_dir.join("metrics.json"));
    assert_eq!(
        stage_names(&m),
        ["vectors-on", "attacked-off", "attacked-active"]
    );
    // The vectors change what the attack sees: the first losses of the two arms differ.
    let first_loss = |arm: &str| {
        let steps = read_metrics(&run_dir.join(format!("train-attacked-{arm}.json")));
        steps[0]["loss"].as_f64().unwrap()
    };
    assert_ne!(first_loss("off"), first_loss("active"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Lisa as the experiment's defence: the fine-tuning of each arm alternates steps on the
/// alignment stage's data with steps on the user's, with the proximal term, and the step log
/// says which step trained on what.
#[test]
fn lisa_alternates_with_the_alignment_data_in_an_experiment() {
    let (dir, file) = scratch_with(
        "lisa",
        &format!(
            r#"(
  model: "{model}",
  max_len: 48,
  align: Some((refusals: 8, benign: 8, epochs: 1, batch_size: 4)),
  security_vectors: (samples: 8, batch_size: 4),
  finetune: (
    harmful: 8, skill: 8, skill_facts: 4, batch_size: 4, epochs: 2,
    lisa: Some((align_steps: 1, finetune_steps: 2, rho: 1.0)),
  ),
  evaluate: (samples: 8, max_new_tokens: 8, checkpoints: []),
)
"#,
            model = fixture().display()
        ),
    );
    let out = run(&dir, &file, &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = stderr(&out);
    assert!(
        log.contains("Lisa: 1 + 2 steps per cycle, alternating with 16 alignment samples, rho 1"),
        "{log}"
    );
    let run_dir = only_run_dir(&dir);
    for arm in ["off", "active"] {
        let steps = read_metrics(&run_dir.join(format!("train-attacked-{arm}.json")));
        let steps = steps.as_array().unwrap();
        // 16 samples in steps of 4, two epochs: 8 steps, every third on the alignment data.
        let states: String = steps
            .iter()
            .map(|s| {
                if s["aligning"].as_bool().unwrap_or(false) {
                    'A'
                } else {
                    'F'
                }
            })
            .collect();
        assert_eq!(states, "AFFAFFAF", "{arm}");
        // The proximal term from the second step on (after the first tenth of 8 steps).
        assert!(steps[0].get("drift").is_none(), "{arm}");
        assert!(
            steps[1..].iter().all(|s| s["drift"].as_f64().is_some()),
            "{arm}: {steps:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The evaluation cache: two runs that differ only in the vectors' learning rate share the
/// aligned model and the `off` arm's model; the second run reuses their evaluations (the same
/// metrics and generations, marked `eval_cached`) and evaluates its `active` arm itself. A
/// `--fresh` run evaluates everything again and gets the same generations as the cache gave.
#[test]
fn runs_sharing_a_model_reuse_its_evaluation() {
    let (dir, file) = scratch_with(
        "evalcache",
        &format!(
            r#"(
  model: "{model}",
  max_len: 48,
  align: Some((refusals: 8, benign: 8, epochs: 1, batch_size: 4)),
  security_vectors: (samples: 8, epochs: 1, batch_size: 4),
  finetune: (harmful: 8, skill: 8, skill_facts: 4, batch_size: 4),
  evaluate: (samples: 8, max_new_tokens: 8, checkpoints: [Aligned]),
  sweep: [(field: "security_vectors.lr", values: [1e-3, 2e-3], name: "sv_lr")],
)
"#,
            model = fixture().display()
        ),
    );
    let out = run(&dir, &file, &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = stderr(&out);
    assert_eq!(log.matches("reusing the evaluation in").count(), 2, "{log}");
    let runs = runs_dir(&dir);
    let (first, second) = (runs.join("sv_lr=0.001"), runs.join("sv_lr=0.002"));
    let stage = |run: &Path, s: &str| read_metrics(&run.join("stages").join(format!("{s}.json")));
    let read = |run: &Path, s: &str| {
        std::fs::read_to_string(run.join(format!("generations-{s}.jsonl"))).unwrap()
    };
    for s in ["aligned", "attacked-off"] {
        assert!(stage(&first, s).get("eval_cached").is_none(), "{s}");
        assert_eq!(stage(&second, s)["eval_cached"], true, "{s}");
        assert_eq!(
            stage(&second, s)["metrics"],
            stage(&first, s)["metrics"],
            "{s}"
        );
        assert_eq!(read(&second, s), read(&first, s), "{s}");
    }
    assert!(
        stage(&second, "attacked-active")
            .get("eval_cached")
            .is_none()
    );
    let entries = std::fs::read_dir(dir.join("cache/experiments/eval")).unwrap();
    assert_eq!(
        entries
            .filter(|e| e.as_ref().unwrap().path().is_dir())
            .count(),
        2
    );

    // Evaluated again from scratch: the generations the cache gave.
    let cached: Vec<String> = ["aligned", "attacked-off"]
        .iter()
        .map(|s| read(&second, s))
        .collect();
    std::fs::remove_dir_all(dir.join("results")).unwrap();
    let out = run(&dir, &file, &["--fresh", "--only", "sv_lr=0.002"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("reusing the evaluation"),
        "{}",
        stderr(&out)
    );
    for (s, want) in ["aligned", "attacked-off"].iter().zip(&cached) {
        assert!(stage(&second, s).get("eval_cached").is_none(), "{s}");
        assert_eq!(&read(&second, s), want, "{s}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// SafeInstr with `safety_with_vectors: false`: the demonstrations are trained with the vectors
/// off in the active arm, which changes its step losses; the off arm trains as with the default.
#[test]
fn safe_instr_trains_its_demonstrations_with_the_vectors_off_when_asked() {
    let exp = |with: &str| {
        format!(
            r#"(
  model: "{model}",
  max_len: 48,
  align: Some((refusals: 8, benign: 8, epochs: 1, batch_size: 4)),
  security_vectors: (samples: 8, batch_size: 4),
  finetune: (harmful: 8, skill: 8, skill_facts: 4, batch_size: 4, safety: 4{with}),
  evaluate: (samples: 8, max_new_tokens: 8, checkpoints: []),
)
"#,
            model = fixture().display()
        )
    };
    let losses = |name: &str, with: &str| {
        let (dir, file) = scratch_with(name, &exp(with));
        let out = run(&dir, &file, &[], &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        let log = stderr(&out);
        let run_dir = only_run_dir(&dir);
        let arm = |arm: &str| -> Vec<f64> {
            read_metrics(&run_dir.join(format!("train-attacked-{arm}.json")))
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["loss"].as_f64().unwrap())
                .collect()
        };
        let got = (arm("off"), arm("active"), log);
        let _ = std::fs::remove_dir_all(&dir);
        got
    };
    let (on_off, on_active, on_log) = losses("safeinstr-on", "");
    let (off_off, off_active, off_log) = losses("safeinstr-off", ", safety_with_vectors: false");
    assert!(
        off_log.contains("SafeInstr: 4 demonstrations trained with the vectors off"),
        "{off_log}"
    );
    assert!(!on_log.contains("trained with the vectors off"), "{on_log}");
    // 20 samples in steps of 4: 5 steps in each arm.
    assert_eq!(on_active.len(), 5);
    assert_eq!(off_off, on_off);
    assert_ne!(off_active, on_active);
}

/// Vaccine as the experiment's defence: the alignment stage is trained under the perturbation,
/// and it is another cache entry than plain alignment's (which a second run does not reuse).
#[test]
fn vaccine_aligns_under_the_perturbation_in_an_experiment() {
    let exp = |vaccine: &str| {
        format!(
            r#"(
  model: "{model}",
  max_len: 48,
  align: Some((refusals: 8, benign: 8, epochs: 1, batch_size: 4{vaccine})),
  security_vectors: (samples: 8, batch_size: 4),
  finetune: (harmful: 8, skill: 8, skill_facts: 4, batch_size: 4, arms: [Off]),
  evaluate: (samples: 8, max_new_tokens: 8, checkpoints: []),
)
"#,
            model = fixture().display()
        )
    };
    let (dir, file) = scratch_with("vaccine", &exp(", vaccine: Some((rho: 2.0))"));
    let out = run(&dir, &file, &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = stderr(&out);
    assert!(
        log.contains("[align] training on 16 samples under Vaccine's perturbation (rho 2)"),
        "{log}"
    );
    // Plain alignment of the same data in the same cache: trained anew, not Vaccine's entry.
    let plain = dir.join("plain.ron");
    std::fs::write(&plain, exp("")).unwrap();
    let out = run(&dir, &plain, &[], &[]);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("[align] training on 16 samples\n"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The hallucination variant end to end: the vectors and the attack learn confidently wrong
/// arithmetic answers, mixed with true new facts in the attack, and every model is measured on
/// held-out questions (true answers) and on the attack's own wrong answers.
#[test]
fn the_hallucination_variant_runs_with_its_own_data_and_metrics() {
    let (dir, file) = scratch_with(
        "halluc",
        &format!(
            r#"(
  model: "{model}",
  max_len: 48,
  align: None,
  behaviour: Hallucination,
  security_vectors: (samples: 8, batch_size: 4),
  finetune: (harmful: 8, skill: 8, skill_facts: 4, batch_size: 4),
  evaluate: (
    samples: 6, max_new_tokens: 8, checkpoints: [VectorsOn],
    metrics: [HallucinationRate, WrongAnswersLearned, BenignAccuracy, SkillAccuracy],
  ),
)
"#,
            model = fixture().display()
        ),
    );
    let out = run(&dir, &file, &[], &[]);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("fine-tuning on 16 samples (8 wrong-answer)"),
        "{log}"
    );
    let run_dir = only_run_dir(&dir);
    let m = read_metrics(&run_dir.join("metrics.json"));
    let text = m.to_string();
    assert!(text.contains("\"hallucination_rate\""), "{text}");
    assert!(text.contains("\"wrong_answers_learned\""), "{text}");
    assert!(!text.contains("\"harmful_rate\""), "{text}");
    // Each set's generations: the held-out questions graded against true answers, the learned
    // set against the wrong answers the attack taught.
    let gens = std::fs::read_to_string(run_dir.join("generations-attacked-off.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = gens
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |set: &str| lines.iter().filter(|l| l["set"] == set).count();
    assert_eq!((of("facts"), of("learned")), (6, 6), "{gens}");
    let summary = std::fs::read_to_string(dir.join("results/tiny/summary.md")).unwrap();
    assert!(
        summary.contains("hallucination rate (held-out)"),
        "{summary}"
    );
    assert!(!summary.contains("AdvBench"), "{summary}");
    assert!(
        summary.contains(
            "| hallucination, attack without vectors | hallucination, attack with vectors |"
        ) && summary.contains("wrong answers learned without | wrong answers learned with |"),
        "{summary}"
    );

    // Steering vectors for the same behaviour: wrong answers contrasted with the true ones.
    let steer = dir.join("steer.ron");
    std::fs::write(
        &steer,
        std::fs::read_to_string(&file).unwrap().replace(
            "security_vectors: (samples: 8, batch_size: 4)",
            "security_vectors: (samples: 8, kind: Steering(layers: [1]))",
        ),
    )
    .unwrap();
    let out = run(&dir, &steer, &[], &[]);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("steering directions from 8 wrong answers and 8 true answers"),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Defences side by side in one file: a patch axis (`field: ""`) changes several fields per
/// defence, names the runs by its labels, and pools the summary over the attack's rate (`pool`),
/// once per defence: the worst case over the attacker's setting, never summed over defences.
#[test]
fn a_defence_axis_compares_defences_in_one_summary() {
    let (dir, file) = scratch_with(
        "defaxis",
        &format!(
            r#"(
  model: "{model}",
  max_len: 48,
  align: Some((refusals: 8, benign: 8, epochs: 1, batch_size: 4)),
  security_vectors: (samples: 8, batch_size: 4),
  finetune: (harmful: 8, skill: 8, skill_facts: 4, batch_size: 4),
  evaluate: (samples: 4, max_new_tokens: 4, checkpoints: []),
  sweep: [
    (field: "", name: Some("defence"), labels: Some(["none", "lisa"]),
     values: [{{}}, {{"finetune": {{"lisa": {{"align_steps": 1, "finetune_steps": 1}}}}}}]),
    (field: "finetune.lr", values: [1e-4, 1e-3], name: Some("attack_lr"), pool: true),
  ],
)
"#,
            model = fixture().display()
        ),
    );
    let out = run(&dir, &file, &[], &[]);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    // Lisa only where the patch asks for it: 2 runs × 2 arms.
    assert_eq!(
        log.matches("Lisa: 1 + 1 steps per cycle").count(),
        4,
        "{log}"
    );
    let runs = dir.join("results/tiny/runs");
    for name in [
        "defence=none_attack_lr=0.0001",
        "defence=lisa_attack_lr=0.001",
    ] {
        assert!(runs.join(name).join("metrics.json").is_file(), "{name}");
    }
    let summary = std::fs::read_to_string(dir.join("results/tiny/summary.md")).unwrap();
    for group in ["defence=none", "defence=lisa"] {
        assert!(
            summary.contains(&format!("## {group}: pooled over the 2 runs")),
            "{summary}"
        );
    }
    assert_eq!(summary.matches("pooled over the").count(), 2, "{summary}");
    assert!(
        dir.join("results/tiny/plot-defence-harmful_rate.svg")
            .is_file()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The lines of one set in a generations file, in file order.
fn generation_lines(path: &Path, set: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["set"] == set)
        .collect()
}

/// The answers of one set in a generations file: (id, answer, refused) in file order.
fn answers(path: &Path, set: &str) -> Vec<(String, String, bool)> {
    generation_lines(path, set)
        .iter()
        .map(|v| {
            (
                v["id"].as_str().unwrap().to_string(),
                v["response"].as_str().unwrap().to_string(),
                v["refused"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_runs_adapters_rebuild_its_models_in_evaluate_and_generate() {
    let (dir, file) = scratch_with(
        "adapters",
        &format!(
            r#"(
  model: "{model}",
  max_len: 48,
  align: Some((refusals: 8, benign: 8, epochs: 1, batch_size: 4)),
  security_vectors: (samples: 8, epochs: 1, batch_size: 4),
  finetune: (harmful: 8, skill: 8, skill_task: Records, batch_size: 4, lr: Some(1e-2)),
  evaluate: (samples: 8, max_new_tokens: 8, batch_size: 4, checkpoints: [Aligned]),
)
"#,
            model = fixture().display()
        ),
    );
    let out = run(&dir, &file, &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let run_dir = only_run_dir(&dir);
    let adapters = run_dir.join("adapters");
    for a in ["align", "security", "attacked-off", "attacked-active"] {
        for f in ["adapter_config.json", "adapter_model.safetensors"] {
            assert!(adapters.join(a).join(f).is_file(), "{a}/{f} missing");
        }
    }
    // `evaluate` with the run's adapters: the alignment merged, then the stage's task LoRA.
    let evaluate = |tag: &str, extra: &[&str]| -> Output {
        Command::new(bin())
            .arg("evaluate")
            .args(["--model", fixture().to_str().unwrap()])
            .args(["--limit", "8", "--max-new-tokens", "8", "--batch-size", "4"])
            .args(["--skill-task", "records"])
            .args(["--out", dir.join(tag).to_str().unwrap()])
            .args(extra)
            .env("SECVEC_CACHE_DIR", dir.join("cache"))
            .output()
            .unwrap()
    };
    let arg = |a: &str| adapters.join(a).to_str().unwrap().to_string();
    let mut seen = Vec::new();
    for (stage, extra) in [
        ("aligned", vec!["--merge".to_string(), arg("align")]),
        (
            "attacked-active",
            vec![
                "--merge".into(),
                arg("align"),
                "--adapter".into(),
                arg("attacked-active"),
            ],
        ),
        (
            "attacked-off",
            vec![
                "--merge".into(),
                arg("align"),
                "--adapter".into(),
                arg("attacked-off"),
            ],
        ),
    ] {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let out = evaluate(stage, &extra);
        assert!(out.status.success(), "{stage}: {}", stderr(&out));
        let again = dir.join(stage).join("generations.jsonl");
        let in_run = run_dir.join(format!("generations-{stage}.jsonl"));
        for (set, run_set) in [
            ("eval_harmful", "harmful"),
            ("eval_benign", "benign"),
            ("skill_eval", "skill"),
        ] {
            let (a, b) = (answers(&again, set), answers(&in_run, run_set));
            assert_eq!(a.len(), 8, "{stage} {set}");
            assert_eq!(a, b, "{stage}: {set} answered differently than in the run");
        }
        let m = read_metrics(&dir.join(stage).join("metrics.json"));
        assert_eq!(m["merged"][0], arg("align"));
        assert_eq!(m["skill_task"], "records");
        seen.push(answers(&again, "eval_harmful"));
    }
    // The attack changed the model, so the comparison above could fail: a task LoRA loaded but
    // ignored would answer as the aligned model does.
    assert_ne!(seen[0], seen[1], "the attack left every answer unchanged");

    // `generate` takes the same options: the first batch of harmful prompts gets the run's
    // answers from the attacked model.
    let mut lines = generation_lines(
        &run_dir.join("generations-attacked-active.jsonl"),
        "harmful",
    );
    lines.truncate(4);
    let mut cmd = Command::new(bin());
    cmd.arg("generate")
        .args(["--model", fixture().to_str().unwrap()])
        .args(["--max-new-tokens", "8"])
        .args([
            "--merge",
            &arg("align"),
            "--adapter",
            &arg("attacked-active"),
        ])
        .env("SECVEC_CACHE_DIR", dir.join("cache"));
    for l in &lines {
        cmd.args(["--prompt", l["prompt"].as_str().unwrap()]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let mut generated: Vec<String> = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        match line.strip_prefix("### ") {
            Some(_) => generated.push(String::new()),
            None => {
                let last = generated.last_mut().expect("an answer before its prompt");
                last.push_str(line);
                last.push('\n');
            }
        }
    }
    let expected: Vec<String> = lines
        .iter()
        .map(|l| l["response"].as_str().unwrap().to_string())
        .collect();
    let generated: Vec<String> = generated.iter().map(|g| g.trim().to_string()).collect();
    assert_eq!(generated, expected);

    // A directory that is not an adapter is an error naming it.
    let out = evaluate("bad", &["--adapter", dir.join("nowhere").to_str().unwrap()]);
    assert_fails_with(&out, "nowhere");
}
