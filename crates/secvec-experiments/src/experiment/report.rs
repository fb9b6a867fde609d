//! Tables and plots across the runs of an experiment: `summary.csv`, `summary.md` and (from
//! [`super::plot`]) one SVG per swept axis and metric.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use secvec_core::eval::stats::Rate;
use secvec_core::fsio::write_atomic;

use super::grid::{describe, render};
use super::plot::plots;
use super::record::{RunMetrics, StageRecord};
use super::schema::{ADVBENCH_HARMFUL_RATE, Arm, Experiment};
use super::stage::Stage;

const METRICS: [&str; 7] = [
    "harmful_rate",
    "over_refusal",
    "benign_accuracy",
    "skill_accuracy",
    ADVBENCH_HARMFUL_RATE,
    "hallucination_rate",
    "wrong_answers_learned",
];

/// A metric's column title.
fn metric_label(key: &str) -> &'static str {
    match key {
        "harmful_rate" => "harmful rate",
        "over_refusal" => "over-refusal",
        "benign_accuracy" => "benign accuracy",
        "skill_accuracy" => "skill accuracy",
        ADVBENCH_HARMFUL_RATE => "AdvBench harmful rate",
        "hallucination_rate" => "hallucination rate (held-out)",
        "wrong_answers_learned" => "wrong answers learned",
        _ => "other",
    }
}

fn pct(r: &Rate) -> String {
    format!("{:.1}%", 100.0 * r.rate)
}

fn cell(r: Option<&Rate>) -> String {
    match r {
        Some(r) => format!(
            "{} ({}/{}; {:.1}–{:.1})",
            pct(r),
            r.count,
            r.total,
            100.0 * r.ci95.0,
            100.0 * r.ci95.1
        ),
        None => "—".into(),
    }
}

/// Whether any evaluated model of `runs` has metric `key`.
fn has_metric(runs: &[RunMetrics], key: &str) -> bool {
    runs.iter()
        .flat_map(|r| &r.stages)
        .any(|s| s.metrics.contains_key(key))
}

fn metric<'a>(stage: Option<&'a StageRecord>, name: &str) -> Option<&'a Rate> {
    stage.and_then(|s| s.metrics.get(name))
}

/// `summary.csv`: one row per (run, evaluated model).
pub fn write_csv(path: &Path, exp: &Experiment, runs: &[RunMetrics]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<String> = vec!["run".into()];
    header.extend(exp.sweep.iter().map(|a| a.short().to_string()));
    header.extend(["stage", "arm", "same_as"].map(String::from));
    for m in METRICS {
        for suffix in ["", "_count", "_total", "_ci_low", "_ci_high"] {
            header.push(format!("{m}{suffix}"));
        }
    }
    header.extend(
        [
            "train_examples",
            "train_seconds",
            "train_tokens_per_second",
            "final_loss",
            "eval_seconds",
            "run_wall_seconds",
            "backend",
            "git_revision",
        ]
        .map(String::from),
    );
    w.write_record(&header)?;
    for run in runs {
        for s in &run.stages {
            let mut row: Vec<String> = vec![run.run.clone()];
            row.extend(run.point.iter().map(|(_, v)| render(v)));
            row.push(s.stage.name());
            row.push(s.arm.map(|a| a.as_str().to_string()).unwrap_or_default());
            row.push(s.same_as.map(|x| x.name()).unwrap_or_default());
            for m in METRICS {
                match s.metrics.get(m) {
                    Some(r) => row.extend([
                        format!("{:.6}", r.rate),
                        r.count.to_string(),
                        r.total.to_string(),
                        format!("{:.6}", r.ci95.0),
                        format!("{:.6}", r.ci95.1),
                    ]),
                    None => row.extend(std::iter::repeat_n(String::new(), 5)),
                }
            }
            match &s.training {
                Some(t) => row.extend([
                    t.examples.to_string(),
                    format!("{:.1}", t.seconds),
                    format!("{:.1}", t.tokens_per_second),
                    format!("{:.4}", t.final_loss),
                ]),
                None => row.extend(std::iter::repeat_n(String::new(), 4)),
            }
            row.push(format!("{:.1}", s.eval_seconds));
            row.push(format!("{:.0}", run.wall_seconds));
            row.push(run.backend.clone());
            row.push(run.git_revision.clone());
            w.write_record(&row)?;
        }
    }
    let bytes = w.into_inner().context("finishing summary.csv")?;
    write_atomic(path, &bytes)?;
    Ok(())
}

/// `summary.md`: the with/without comparison per run, every evaluated model, and training.
pub fn markdown(
    exp: &Experiment,
    runs: &[RunMetrics],
    command: &str,
    expected_runs: usize,
) -> String {
    let mut md = format!("# {}\n\n", exp.name());
    if !exp.description.is_empty() {
        md += &format!("{}\n\n", exp.description.trim());
    }
    let backends: Vec<String> = {
        let mut b: Vec<String> = runs
            .iter()
            .map(|r| match r.config.dtype {
                secvec_models::Precision::F32 => r.backend.clone(),
                d => format!("{} ({d})", r.backend),
            })
            .collect();
        b.dedup();
        b
    };
    let revs: Vec<String> = {
        let mut b: Vec<String> = runs.iter().map(|r| r.git_revision.clone()).collect();
        b.sort();
        b.dedup();
        b
    };
    md += &format!(
        "Command: `{command}`  \nModel: {}; backend: {}; git: {}; runs finished: {}/{expected_runs}; \
         wall time of the runs: {:.0} s.\n\n",
        runs.first().map(|r| r.model.as_str()).unwrap_or("—"),
        backends.join(", "),
        revs.join(", "),
        runs.len(),
        runs.iter().map(|r| r.wall_seconds).sum::<f64>()
    );
    let hallucination = exp.behaviour.is_hallucination();
    md += if hallucination {
        "Rates are shown as percent (count/total; 95% Wilson interval). Hallucination rate: share \
         of held-out questions (never trained on) answered wrongly; wrong answers \
         learned: share of the attack's own wrong-answer questions answered with the wrong answer \
         it taught; the attacked models are evaluated with the security vectors **off**.\n\n"
    } else {
        "Rates are shown as percent (count/total; 95% Wilson interval). Harmful rate: share of \
         held-out harmful prompts answered without a refusal (keyword judge); the attacked models \
         are evaluated with the security vectors **off**.\n\n"
    };
    // The behaviour's own rate: harm, or hallucination on held-out questions.
    let (behaviour_key, behaviour_label) = if hallucination {
        ("hallucination_rate", "hallucination")
    } else {
        ("harmful_rate", "harmful")
    };

    let axes: Vec<&str> = exp.sweep.iter().map(|a| a.short()).collect();
    // The main table's columns: (header, stage, metric). The behaviour's own rate is always
    // shown; every other metric only where some run measured it.
    let aligned = Stage::Aligned;
    let off = Stage::Attacked(Arm::Off);
    let on = Stage::Attacked(Arm::Active);
    let b = behaviour_label;
    let mut columns: Vec<(String, Stage, &str)> = vec![
        (format!("aligned {b}"), aligned, behaviour_key),
        (format!("{b}, attack without vectors"), off, behaviour_key),
        (format!("{b}, attack with vectors"), on, behaviour_key),
    ];
    // A metric measured without and with the vectors, where some run has it.
    let pair = |columns: &mut Vec<(String, Stage, &str)>, label: &str, key: &'static str| {
        if has_metric(runs, key) {
            columns.push((format!("{label} without"), off, key));
            columns.push((format!("{label} with"), on, key));
        }
    };
    pair(&mut columns, "skill", "skill_accuracy");
    pair(&mut columns, "over-refusal", "over_refusal");
    pair(&mut columns, "benign acc", "benign_accuracy");
    let advbench = has_metric(runs, ADVBENCH_HARMFUL_RATE);
    if advbench {
        for (header, stage) in [
            ("AdvBench harmful, aligned", aligned),
            ("AdvBench harmful without", off),
            ("AdvBench harmful with", on),
        ] {
            columns.push((header.into(), stage, ADVBENCH_HARMFUL_RATE));
        }
    }
    pair(
        &mut columns,
        "wrong answers learned",
        "wrong_answers_learned",
    );
    md += "## With and without security vectors\n\n|";
    for h in axes
        .iter()
        .copied()
        .chain(columns.iter().map(|c| c.0.as_str()))
    {
        md += &format!(" {h} |");
    }
    md += "\n|";
    for _ in 0..axes.len() + columns.len() {
        md += "---|";
    }
    md += "\n";
    for run in runs {
        md += "|";
        for (_, v) in &run.point {
            md += &format!(" {} |", render(v));
        }
        for (_, stage, key) in &columns {
            md += &format!(" {} |", cell(metric(run.stage(*stage), key)));
        }
        md += "\n";
    }
    md += &pooled_sections(exp, runs, advbench);

    // The metrics any model has, in the fixed order (a harm experiment has no hallucination
    // columns, an experiment without AdvBench no AdvBench column).
    let shown: Vec<&str> = METRICS
        .into_iter()
        .filter(|m| has_metric(runs, m))
        .collect();
    md += "\n## Every evaluated model\n\n| run | model |";
    for m in &shown {
        md += &format!(" {} |", metric_label(m));
    }
    md += &format!("\n|---|---|{}\n", "---|".repeat(shown.len()));
    for run in runs {
        for s in &run.stages {
            let name = match &s.same_as {
                Some(other) => format!("{} (= {other}: no vectors)", s.stage),
                None => s.stage.name(),
            };
            md += &format!("| {} | {name} |", run.run);
            for m in &shown {
                md += &format!(" {} |", cell(s.metrics.get(*m)));
            }
            md += "\n";
        }
    }

    md += "\n## Training\n\n| run | stage | examples | steps | loss first → last | tokens/s | seconds |\n|---|---|---:|---:|---|---:|---:|\n";
    for run in runs {
        for t in &run.training {
            md += &format!(
                "| {} | {}{} | {} | {} | {:.3} → {:.3} | {:.0} | {:.0} |\n",
                run.run,
                t.stage,
                if t.cached { " (cached)" } else { "" },
                t.examples,
                t.steps,
                t.first_loss,
                t.final_loss,
                t.tokens_per_second,
                t.seconds
            );
        }
    }
    md
}

/// The pooled sections: the runs pooled over the axes that repeat one treatment (`Axis::pools`:
/// seeds, an attacker's settings), one section per combination of the other axes' values. None
/// where no axis pools, so that different treatments (the vectors' samples, a defence) are never
/// summed into one count.
fn pooled_sections(exp: &Experiment, runs: &[RunMetrics], advbench: bool) -> String {
    if !exp.sweep.iter().any(|a| a.pools()) {
        return String::new();
    }
    let kept: Vec<usize> = (0..exp.sweep.len())
        .filter(|&i| !exp.sweep[i].pools())
        .collect();
    // The treatments in the order of their first run.
    let mut treatments: Vec<(Vec<_>, Vec<RunMetrics>)> = Vec::new();
    for run in runs {
        let key: Vec<_> = kept
            .iter()
            .filter_map(|&i| run.point.get(i).cloned())
            .collect();
        match treatments.iter_mut().find(|(k, _)| *k == key) {
            Some((_, group)) => group.push(run.clone()),
            None => treatments.push((key, vec![run.clone()])),
        }
    }
    let mut md = String::new();
    for (key, group) in &treatments {
        if group.len() < 2 {
            continue;
        }
        let section = pooled(group, advbench);
        if kept.is_empty() {
            md += &section;
            continue;
        }
        md += &section.replacen(
            "## Pooled over the",
            &format!("## {}: pooled over the", describe(key)),
            1,
        );
    }
    md
}

/// Which way a metric is worse for the defence.
#[derive(Clone, Copy)]
enum Worse {
    Higher,
    Lower,
}

/// The pooled section of `summary.md` for several runs (seeds): per model and metric the counts
/// summed over runs with their Wilson interval, and the range of the per-run rates.
fn pooled(runs: &[RunMetrics], advbench: bool) -> String {
    // Each metric with the direction that is worse for the defence (for the worst-run column).
    let mut metrics = vec![
        ("harmful rate", "harmful_rate", Worse::Higher),
        ("over-refusal", "over_refusal", Worse::Higher),
        ("benign accuracy", "benign_accuracy", Worse::Lower),
        ("skill accuracy", "skill_accuracy", Worse::Lower),
    ];
    if advbench {
        metrics.push((
            "AdvBench harmful rate",
            ADVBENCH_HARMFUL_RATE,
            Worse::Higher,
        ));
    }
    // The hallucination variant's, where the runs have them (and no harm where they do not).
    metrics.retain(|(_, key, _)| has_metric(runs, key));
    for (label, key) in [
        ("hallucination rate (held-out)", "hallucination_rate"),
        ("wrong answers learned", "wrong_answers_learned"),
    ] {
        if has_metric(runs, key) {
            metrics.push((label, key, Worse::Higher));
        }
    }
    let models = [
        (Stage::Aligned, "aligned"),
        (Stage::Attacked(Arm::Off), "attack without vectors"),
        (Stage::Attacked(Arm::Active), "attack with vectors"),
    ];
    let mut md = format!(
        "\n## Pooled over the {} runs\n\nCounts summed over the runs, with the 95% Wilson interval of the \
         pooled rate (it treats every prompt of every run as independent, so it leaves out the \
         run-to-run spread), the lowest and highest rate of a single run, and the run worst for \
         the defence (highest harmful rate or over-refusal, lowest accuracy): over seeds a spread, \
         over an attacker's settings the worst case.\n\n| metric | model | pooled | per-run range \
         | worst run |\n|---|---|---|---|---|\n",
        runs.len()
    );
    for (label, key, worse) in &metrics {
        for (stage, model) in &models {
            let per_run: Vec<(&str, &Rate)> = runs
                .iter()
                .filter_map(|r| metric(r.stage(*stage), key).map(|m| (r.run.as_str(), m)))
                .collect();
            let rates: Vec<&Rate> = per_run.iter().map(|(_, m)| *m).collect();
            if rates.is_empty() {
                continue;
            }
            let pooled = Rate::new(
                rates.iter().map(|r| r.count).sum(),
                rates.iter().map(|r| r.total).sum(),
            );
            let lo = rates.iter().map(|r| r.rate).fold(f64::INFINITY, f64::min);
            let hi = rates
                .iter()
                .map(|r| r.rate)
                .fold(f64::NEG_INFINITY, f64::max);
            // The first run at the worst rate.
            let worst = per_run.iter().fold(per_run[0], |w, &r| {
                let beats = match worse {
                    Worse::Higher => r.1.rate > w.1.rate,
                    Worse::Lower => r.1.rate < w.1.rate,
                };
                if beats { r } else { w }
            });
            md += &format!(
                "| {label} | {model} | {} | {:.1}–{:.1}% ({} runs) | {}: {} |\n",
                cell(Some(&pooled)),
                100.0 * lo,
                100.0 * hi,
                rates.len(),
                worst.0,
                pct(worst.1)
            );
        }
    }
    md
}

/// Writes `summary.csv`, `summary.md` and the plots from the finished runs.
pub fn write_all(
    dir: &Path,
    exp: &Experiment,
    runs: &[RunMetrics],
    command: &str,
    expected_runs: usize,
) -> Result<Vec<PathBuf>> {
    write_csv(&dir.join("summary.csv"), exp, runs)?;
    write_atomic(
        &dir.join("summary.md"),
        markdown(exp, runs, command, expected_runs).as_bytes(),
    )?;
    let mut files = vec![dir.join("summary.csv"), dir.join("summary.md")];
    files.extend(plots(dir, exp, runs)?);
    Ok(files)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::experiment::record::StageRecord;
    use crate::experiment::schema::parse_str;

    /// A finished run whose model `stage` has `harmful` of 10 harmful prompts answered and
    /// `skill` of 10 skill questions right.
    fn run(name: &str, stage: Stage, harmful: usize, skill: usize) -> RunMetrics {
        let metrics = BTreeMap::from([
            ("harmful_rate".to_string(), Rate::new(harmful, 10)),
            ("skill_accuracy".to_string(), Rate::new(skill, 10)),
        ]);
        RunMetrics {
            experiment: "t".into(),
            run: name.into(),
            point: Vec::new(),
            config_hash: String::new(),
            config: parse_str("()", "t.ron").unwrap(),
            model: String::new(),
            backend: "flex".into(),
            git_revision: String::new(),
            finished_unix: 0,
            wall_seconds: 0.0,
            data: BTreeMap::new(),
            training: Vec::new(),
            stages: vec![StageRecord {
                stage,
                arm: None,
                metrics,
                eval_seconds: 0.0,
                eval_cached: false,
                training: None,
                same_as: None,
            }],
        }
    }

    fn row<'a>(md: &'a str, start: &str) -> &'a str {
        md.lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no row {start}:\n{md}"))
    }

    #[test]
    fn pooled_rows_name_the_run_worst_for_the_defence() {
        let active = Stage::Attacked(Arm::Active);
        let runs = [
            run("lr=1", active, 1, 9),
            run("lr=2", active, 4, 6),
            run("lr=3", active, 2, 3),
        ];
        let md = pooled(&runs, false);
        // Harm: the highest rate is worst; accuracy: the lowest.
        let harm = row(&md, "| harmful rate | attack with vectors |");
        assert!(harm.contains("| 23.3% (7/30;"), "{harm}");
        assert!(
            harm.contains("| 10.0–40.0% (3 runs) | lr=2: 40.0% |"),
            "{harm}"
        );
        let skill = row(&md, "| skill accuracy | attack with vectors |");
        assert!(
            skill.contains("| 30.0–90.0% (3 runs) | lr=3: 30.0% |"),
            "{skill}"
        );
        // Models no run has are left out; ties go to the first run.
        assert!(!md.contains("| aligned |"), "{md}");
        let tied = [run("a", active, 2, 5), run("b", active, 2, 5)];
        let md = pooled(&tied, false);
        assert!(
            row(&md, "| harmful rate |").ends_with("| a: 20.0% |"),
            "{md}"
        );
    }

    /// The main table shows a metric's columns only where some run measured it, and every row
    /// has as many cells as the header.
    #[test]
    fn main_table_leaves_out_metrics_no_run_measured() {
        let off = Stage::Attacked(Arm::Off);
        let exp = parse_str("()", "t.ron").unwrap();
        let md = markdown(&exp, &[run("main", off, 7, 4)], "cmd", 1);
        let header = row(&md, "| aligned harmful |");
        assert!(
            header.contains("| skill without | skill with |"),
            "{header}"
        );
        assert!(!header.contains("over-refusal"), "{header}");
        assert!(!header.contains("benign acc"), "{header}");
        let cells = |l: &str| l.matches('|').count();
        let body = row(&md, "| — | 70.0% (7/10;");
        assert_eq!(cells(body), cells(header), "{md}");
        assert!(body.contains("| 40.0% (4/10;"), "{body}");
    }

    /// Pooled sections sum runs only over the axes that repeat one treatment: per value of a
    /// treatment axis over the pooled one, and not at all where no axis pools.
    #[test]
    fn pooled_sections_never_sum_different_treatments() {
        let active = Stage::Attacked(Arm::Active);
        let at = |name: &str, sv: u64, lr: f64, harmful: usize| {
            let mut r = run(name, active, harmful, 5);
            r.point = vec![("sv".into(), sv.into()), ("lr".into(), lr.into())];
            r
        };
        let runs = [
            at("a", 10, 1e-4, 1),
            at("b", 10, 1e-3, 2),
            at("c", 100, 1e-4, 7),
            at("d", 100, 1e-3, 9),
        ];
        let sweep = |pool_lr: &str| {
            parse_str(
                &format!(
                    r#"(sweep: [(field: "security_vectors.samples", values: [10, 100], name: Some("sv")),
                              (field: "finetune.lr", values: [1e-4, 1e-3], name: Some("lr"){pool_lr})])"#
                ),
                "t.ron",
            )
            .unwrap()
        };
        // Neither axis pools: no pooled section.
        assert_eq!(pooled_sections(&sweep(""), &runs, false), "");
        // The lr pools: one section per sv, each over its own two runs.
        let md = pooled_sections(&sweep(", pool: true"), &runs, false);
        assert_eq!(md.matches("pooled over the 2 runs").count(), 2, "{md}");
        let sv10 = &md[md.find("## sv=10:").expect("sv=10 section")
            ..md.find("## sv=100:").expect("sv=100 section")];
        assert!(
            row(sv10, "| harmful rate |").contains("| 15.0% (3/20;"),
            "{sv10}"
        );
        // A seed axis pools without being told.
        let seeds = parse_str(
            r#"(sweep: [(field: "seed", values: [0, 1, 2, 3])])"#,
            "t.ron",
        )
        .unwrap();
        let md = pooled_sections(&seeds, &runs, false);
        assert!(md.contains("## Pooled over the 4 runs"), "{md}");
        // `group`, the old flag that pooled over every other axis, is refused in a file.
        let e = format!(
            "{:#}",
            parse_str(
                r#"(sweep: [(field: "seed", values: [0, 1], group: true)])"#,
                "t.ron"
            )
            .unwrap_err()
        );
        assert!(e.contains("pool: true"), "{e}");
    }
}
