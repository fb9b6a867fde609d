//! Sweep expansion: every combination of the axes' values becomes a named run whose
//! experiment has those fields overridden.
//!
//! Overrides go through the experiment's JSON form (serde), so any field can be swept, a path
//! that does not exist is an error naming it, and a value of the wrong type is rejected by the
//! same deserializer that reads the file.

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::schema::Experiment;

/// One point of the grid.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Directory-safe and unique within the experiment, e.g. `samples=100_harmful=1000`.
    pub name: String,
    /// `(axis short name, value)` in axis order.
    pub point: Vec<(String, Value)>,
    /// The experiment with the point's values applied (its `sweep` emptied).
    pub experiment: Experiment,
}

/// A value as it appears in a run name or a table cell.
pub fn render(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "none".into(),
        // A list (e.g. steering layers) as its items joined by `+`: `[10, 20]` → `10+20`.
        Value::Array(items) => items.iter().map(render).collect::<Vec<_>>().join("+"),
        other => other.to_string(),
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-=+".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Merges `patch` into `node`: objects field by field (recursively), anything else replaced.
fn merge(node: &mut Value, patch: Value) {
    match (node, patch) {
        (Value::Object(into), Value::Object(from)) => {
            for (k, v) in from {
                merge(into.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, patch) => *slot = patch,
    }
}

/// Sets `path` (dotted) in `root`; every segment must name an existing field.
fn set_path(root: &mut Value, path: &str, value: Value) -> Result<()> {
    let mut node = root;
    let segments: Vec<&str> = path.split('.').collect();
    for (i, seg) in segments.iter().enumerate() {
        let so_far = segments[..i].join(".");
        let obj = match node {
            Value::Object(map) => map,
            Value::Null => {
                bail!("`{so_far}` is None in this experiment, so `{path}` cannot be swept")
            }
            _ => bail!("`{so_far}` is not a struct, so it has no field `{seg}`"),
        };
        let last = i + 1 == segments.len();
        if last && !obj.contains_key(*seg) {
            // A field at its default may be left out of the serialised form (`skip_serializing_if`
            // keeps configuration hashes stable when a field is added), so a missing last segment
            // is inserted; the deserializer, which rejects unknown fields, then decides whether the
            // struct has it (see `expand`).
            obj.insert(seg.to_string(), value);
            return Ok(());
        }
        if !obj.contains_key(*seg) {
            let mut known: Vec<&str> = obj.keys().map(|k| k.as_str()).collect();
            known.sort();
            let parent = if so_far.is_empty() {
                "the experiment".to_string()
            } else {
                format!("`{so_far}`")
            };
            bail!(
                "{parent} has no field `{seg}` (fields: {})",
                known.join(", ")
            );
        }
        let next = obj.get_mut(*seg).expect("checked above");
        if last {
            *next = value;
            return Ok(());
        }
        node = next;
    }
    bail!("empty field path")
}

/// Expands the sweep. Without axes there is one run, named `main`.
pub fn expand(exp: &Experiment) -> Result<Vec<RunSpec>> {
    let mut base = exp.clone();
    base.sweep.clear();
    if exp.sweep.is_empty() {
        return Ok(vec![RunSpec {
            name: "main".into(),
            point: Vec::new(),
            experiment: base,
        }]);
    }
    let base_json = serde_json::to_value(&base).context("serialising the experiment")?;
    // Mixed-radix counter over the axes; the last axis varies fastest.
    let sizes: Vec<usize> = exp.sweep.iter().map(|a| a.values.len()).collect();
    let total: usize = sizes.iter().product();
    let mut runs = Vec::with_capacity(total);
    let mut names = std::collections::HashSet::new();
    for index in 0..total {
        let mut rem = index;
        let mut choice = vec![0; sizes.len()];
        for (k, &n) in sizes.iter().enumerate().rev() {
            choice[k] = rem % n;
            rem /= n;
        }
        let mut json = base_json.clone();
        let mut point = Vec::new();
        for (axis, &c) in exp.sweep.iter().zip(&choice) {
            let v = axis.values[c].clone();
            if axis.is_patch() {
                merge(&mut json, v);
            } else {
                set_path(&mut json, &axis.field, v)
                    .with_context(|| format!("sweep field `{}`", axis.field))?;
            }
            point.push((axis.short().to_string(), axis.shown()[c].clone()));
        }
        let mut experiment: Experiment = match serde_json::from_value(json) {
            Ok(e) => e,
            Err(e) if exp.sweep.iter().any(|a| a.is_patch()) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "sweep point {}: the patched experiment is not valid",
                    describe(&point)
                )));
            }
            Err(e) if e.to_string().starts_with("unknown field") => {
                let axis = exp
                    .sweep
                    .iter()
                    .find(|a| {
                        let seg = a.field.rsplit('.').next().unwrap_or(&a.field);
                        e.to_string().starts_with(&format!("unknown field `{seg}`"))
                    })
                    .map_or("?", |a| a.field.as_str());
                bail!("sweep field `{axis}`: there is no such field ({e})");
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "sweep point {}: a value has the wrong type for its field",
                    describe(&point)
                )));
            }
        };
        experiment.sweep.clear();
        experiment
            .validate()
            .with_context(|| format!("sweep point {}", describe(&point)))?;
        let name = sanitize(
            &point
                .iter()
                .map(|(k, v)| format!("{k}={}", render(v)))
                .collect::<Vec<_>>()
                .join("_"),
        );
        if !names.insert(name.clone()) {
            bail!("two sweep points are both named `{name}`; are values repeated in an axis?");
        }
        runs.push(RunSpec {
            name,
            point,
            experiment,
        });
    }
    Ok(runs)
}

/// A sweep point as `name=value, name=value` (run listings, errors, summary titles).
pub(super) fn describe(point: &[(String, Value)]) -> String {
    point
        .iter()
        .map(|(k, v)| format!("{k}={}", render(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::schema::parse_str;

    #[test]
    fn list_values_name_runs_by_their_items() {
        assert_eq!(render(&serde_json::json!([10])), "10");
        assert_eq!(render(&serde_json::json!([10, 20])), "10+20");
        assert_eq!(
            sanitize(&format!("layer={}", render(&serde_json::json!([3, 4])))),
            "layer=3+4"
        );
    }

    #[test]
    fn expands_the_cartesian_product_last_axis_fastest() {
        let exp = parse_str(
            r#"(sweep: [
                (field: "security_vectors.samples", values: [0, 10, 100]),
                (field: "finetune.harmful", values: [100, 1000]),
            ])"#,
            "t.ron",
        )
        .unwrap();
        let runs = expand(&exp).unwrap();
        let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "samples=0_harmful=100",
                "samples=0_harmful=1000",
                "samples=10_harmful=100",
                "samples=10_harmful=1000",
                "samples=100_harmful=100",
                "samples=100_harmful=1000"
            ]
        );
        assert_eq!(runs[3].experiment.security_vectors.samples, 10);
        assert_eq!(runs[3].experiment.finetune.harmful, 1000);
        assert!(runs.iter().all(|r| r.experiment.sweep.is_empty()));
        // Fields not swept keep the file's values.
        assert_eq!(runs[5].experiment.security_vectors.lr, 5e-4);
    }

    #[test]
    fn no_sweep_is_one_run() {
        let exp = parse_str("()", "t.ron").unwrap();
        let runs = expand(&exp).unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].name, "main");
    }

    #[test]
    fn sweeps_floats_options_and_seeds() {
        let exp = parse_str(
            r#"(sweep: [
                (field: "seed", values: [0, 1]),
                (field: "finetune.lr", values: [1e-4, 2e-4], name: "attack_lr"),
                (field: "finetune.ratio", values: [0.1]),
            ], finetune: (total: 1000))"#,
            "t.ron",
        )
        .unwrap();
        let runs = expand(&exp).unwrap();
        assert_eq!(runs.len(), 4);
        assert_eq!(runs[1].name, "seed=0_attack_lr=0.0002_ratio=0.1");
        assert_eq!(runs[1].experiment.finetune.lr, Some(2e-4));
        assert_eq!(runs[2].experiment.seed, 1);
        assert_eq!(runs[2].experiment.finetune.counts().unwrap(), (100, 900));
    }

    #[test]
    fn fields_left_out_of_the_serialised_form_at_their_default_can_be_swept() {
        // `security_vectors.benign` is not serialised while it is 0 (configuration hashes stay
        // those of files written before it existed), yet it is a field and can be swept.
        let exp = parse_str(
            r#"(sweep: [(field: "security_vectors.benign", values: [0, 100])])"#,
            "t.ron",
        )
        .unwrap();
        let runs = expand(&exp).unwrap();
        assert_eq!(runs[0].experiment.security_vectors.benign, 0);
        assert_eq!(runs[1].experiment.security_vectors.benign, 100);
        assert_eq!(runs[1].name, "benign=100");
    }

    #[test]
    fn unknown_paths_and_wrong_types_are_errors_naming_the_field() {
        let exp = parse_str(
            r#"(sweep: [(field: "finetune.learning_rate", values: [1e-4])])"#,
            "t.ron",
        )
        .unwrap();
        let e = format!("{:#}", expand(&exp).unwrap_err());
        assert!(e.contains("finetune.learning_rate"), "{e}");
        assert!(e.contains("no such field"), "{e}");
        // The error lists the fields the stage does have.
        assert!(e.contains("`epochs`"), "{e}");

        // An unknown field in the middle of the path.
        let exp = parse_str(
            r#"(sweep: [(field: "finetuning.lr", values: [1e-4])])"#,
            "t.ron",
        )
        .unwrap();
        let e = format!("{:#}", expand(&exp).unwrap_err());
        assert!(e.contains("no field `finetuning`"), "{e}");

        let exp = parse_str(
            r#"(sweep: [(field: "finetune.epochs", values: ["three"])])"#,
            "t.ron",
        )
        .unwrap();
        let e = format!("{:#}", expand(&exp).unwrap_err());
        assert!(e.contains("epochs=three"), "{e}");

        let exp = parse_str(
            r#"(align: None, sweep: [(field: "align.lr", values: [1e-4])])"#,
            "t.ron",
        )
        .unwrap();
        let e = format!("{:#}", expand(&exp).unwrap_err());
        assert!(e.contains("`align` is None"), "{e}");

        // A value that parses but is out of range is caught by validation.
        let exp = parse_str(
            r#"(sweep: [(field: "security_vectors.lr", values: [0.0])])"#,
            "t.ron",
        )
        .unwrap();
        let e = format!("{:#}", expand(&exp).unwrap_err());
        assert!(e.contains("security_vectors.lr"), "{e}");
    }

    #[test]
    fn a_patch_axis_changes_several_fields_and_names_runs_by_its_labels() {
        let exp = parse_str(
            r#"(sweep: [
                (field: "", name: Some("defence"), labels: Some(["none", "safeinstr", "lisa", "vaccine"]),
                 values: [{}, {"finetune": {"safety": 50}},
                          {"finetune": {"lisa": {"align_steps": 2, "finetune_steps": 8}}},
                          {"align": {"vaccine": {"rho": 3.0}}, "finetune": {"lr": 1e-4}}]),
                (field: "finetune.lr", values: [1e-4, 1e-3], name: Some("attack_lr")),
            ])"#,
            "t.ron",
        )
        .unwrap();
        let runs = expand(&exp).unwrap();
        let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "defence=none_attack_lr=0.0001",
                "defence=none_attack_lr=0.001",
                "defence=safeinstr_attack_lr=0.0001",
                "defence=safeinstr_attack_lr=0.001",
                "defence=lisa_attack_lr=0.0001",
                "defence=lisa_attack_lr=0.001",
                "defence=vaccine_attack_lr=0.0001",
                "defence=vaccine_attack_lr=0.001",
            ]
        );
        let base = Experiment::default();
        let none = &runs[0].experiment;
        assert_eq!(none.finetune.safety, 0);
        assert_eq!(none.finetune.lisa, None);
        assert_eq!(runs[2].experiment.finetune.safety, 50);
        // Merged: the rest of `finetune` is the file's.
        assert_eq!(runs[2].experiment.finetune.harmful, base.finetune.harmful);
        let lisa = runs[4].experiment.finetune.lisa.as_ref().unwrap();
        assert_eq!((lisa.align_steps, lisa.finetune_steps), (2, 8));
        assert_eq!(lisa.rho, 1.0, "core's default");
        let vaccine = &runs[6].experiment;
        assert_eq!(
            vaccine
                .align
                .as_ref()
                .unwrap()
                .vaccine
                .as_ref()
                .unwrap()
                .rho,
            3.0
        );
        assert_eq!(
            vaccine.align.as_ref().unwrap().refusals,
            base.align.as_ref().unwrap().refusals
        );
        // A later axis overrides the patch: the attack's lr is the lr axis's.
        assert_eq!(runs[6].experiment.finetune.lr, Some(1e-4));
        assert_eq!(runs[7].experiment.finetune.lr, Some(1e-3));
        // The point records the label, which tables and plots show.
        assert_eq!(runs[4].point[0].1, serde_json::json!("lisa"));
    }

    #[test]
    fn bad_patch_axes_are_errors() {
        for (text, want) in [
            (
                r#"(sweep: [(field: "", values: [{}])])"#,
                "needs a `name` and `labels`",
            ),
            (
                r#"(sweep: [(field: "", name: Some("d"), labels: Some(["a"]), values: [3])])"#,
                "not a patch",
            ),
            (
                r#"(sweep: [(field: "seed", labels: Some(["a"]), values: [1, 2])])"#,
                "1 labels for 2 values",
            ),
        ] {
            let e = format!("{:#}", parse_str(text, "t.ron").unwrap_err());
            assert!(e.contains(want), "{text}: {e}");
        }
        // A patch naming a field that does not exist: the point is named.
        let exp = parse_str(
            r#"(sweep: [(field: "", name: Some("d"), labels: Some(["x"]), values: [{"finetune": {"lisaa": {}}}])])"#,
            "t.ron",
        )
        .unwrap();
        let e = format!("{:#}", expand(&exp).unwrap_err());
        assert!(e.contains("d=x") && e.contains("lisaa"), "{e}");
    }
}
