//! One SVG per swept axis and metric: the metric against the axis value, one line per arm.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use plotters::prelude::*;

use secvec_core::eval::stats::Rate;

use super::grid::render;
use super::record::RunMetrics;
use super::schema::{ADVBENCH_HARMFUL_RATE, Arm, Experiment};
use super::stage::Stage;

/// One SVG per swept axis and metric (harmful rate, AdvBench harmful rate, over-refusal, benign
/// and skill accuracy, those the runs have): the metric against the axis value, one line per arm (and per
/// combination of the other axes), with 95% intervals as vertical bars.
pub fn plots(dir: &Path, exp: &Experiment, runs: &[RunMetrics]) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (ai, axis) in exp.sweep.iter().enumerate() {
        // Every metric the runs report: harm and each kind of utility (a run without a metric,
        // e.g. no AdvBench, simply has no point on its plot; a metric no run has, no plot).
        for metric in [
            "harmful_rate",
            ADVBENCH_HARMFUL_RATE,
            "over_refusal",
            "benign_accuracy",
            "skill_accuracy",
            "hallucination_rate",
            "wrong_answers_learned",
        ] {
            // series label → points (axis index, rate)
            let mut series: BTreeMap<String, Vec<(usize, Rate)>> = BTreeMap::new();
            for run in runs {
                let Some((_, value)) = run.point.get(ai) else {
                    continue;
                };
                let Some(x) = axis.shown().iter().position(|v| v == value) else {
                    continue;
                };
                let others: Vec<String> = run
                    .point
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != ai)
                    .map(|(_, (k, v))| format!("{k}={}", render(v)))
                    .collect();
                for arm in [Arm::Off, Arm::Active] {
                    if let Some(r) = metric_of(run, arm, metric) {
                        let mut label = arm.label().to_string();
                        if !others.is_empty() {
                            label += &format!(", {}", others.join(", "));
                        }
                        series.entry(label).or_default().push((x, *r));
                    }
                }
            }
            if series.is_empty() {
                continue;
            }
            let path = dir.join(format!("plot-{}-{metric}.svg", axis.short()));
            draw(
                &path,
                axis.short(),
                &axis.shown().iter().map(render).collect::<Vec<_>>(),
                metric,
                &series,
            )
            .with_context(|| format!("drawing {}", path.display()))?;
            written.push(path);
        }
    }
    Ok(written)
}

fn metric_of<'a>(run: &'a RunMetrics, arm: Arm, metric: &str) -> Option<&'a Rate> {
    run.stage(Stage::Attacked(arm))
        .and_then(|s| s.metrics.get(metric))
}

fn draw(
    path: &Path,
    axis: &str,
    labels: &[String],
    metric: &str,
    series: &BTreeMap<String, Vec<(usize, Rate)>>,
) -> Result<()> {
    let tmp = path.with_extension("svg.tmp");
    {
        let root = SVGBackend::new(&tmp, (720, 440)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let n = labels.len().max(1);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{} vs {axis}", metric.replace('_', " ")),
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..100f64)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let labels_owned = labels.to_vec();
        chart
            .configure_mesh()
            .x_desc(axis)
            .y_desc(format!("{} (%)", metric.replace('_', " ")))
            .x_labels(n)
            .x_label_formatter(&|x: &f64| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < labels_owned.len() {
                    labels_owned[i as usize].clone()
                } else {
                    String::new()
                }
            })
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for (k, (label, points)) in series.iter().enumerate() {
            let color = Palette99::pick(k).to_rgba();
            let mut pts: Vec<(f64, Rate)> = points.iter().map(|(x, r)| (*x as f64, *r)).collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(
                    pts.iter().map(|(x, r)| (*x, 100.0 * r.rate)),
                    color.stroke_width(2),
                ))
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .label(label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart
                .draw_series(
                    pts.iter()
                        .map(|(x, r)| Circle::new((*x, 100.0 * r.rate), 4, color.filled())),
                )
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            chart
                .draw_series(pts.iter().map(|(x, r)| {
                    PathElement::new(
                        vec![(*x, 100.0 * r.ci95.0), (*x, 100.0 * r.ci95.1)],
                        color.stroke_width(1),
                    )
                }))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
