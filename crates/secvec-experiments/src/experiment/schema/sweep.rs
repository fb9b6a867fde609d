//! The sweep of an experiment file and the assertions checked after it.

use serde::{Deserialize, Serialize};

/// One axis of the sweep: a dotted field path and its values, e.g.
/// `(field: "security_vectors.samples", values: [10, 100])`.
///
/// With `field: ""` each value is a *patch* of the whole experiment, merged into it (structs
/// field by field, anything else replaced), so that one axis can change several fields together,
/// e.g. a defence:
/// `(field: "", name: Some("defence"), labels: Some(["none", "lisa"]), values: [{}, {"finetune": {"lisa": {}}}])`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Axis {
    pub field: String,
    pub values: Vec<serde_json::Value>,
    /// Short name used in run names and plots (default: the field's last segment).
    #[serde(default)]
    pub name: Option<String>,
    /// Names of the values in run names, tables and plots, one per value (required for a patch
    /// axis, whose values are structs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// The runs along this axis repeat one treatment (an attacker's settings, repeats of a
    /// measurement): the summary pools over them, once per combination of the other axes' values
    /// (e.g. the worst case over the attacker's learning rate, per defence). A `seed` axis always
    /// pools. Axes that change the treatment (the vectors' samples, a defence) never should: their
    /// runs are only compared side by side.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pool: bool,
    /// Replaced by `pool`. Read only so that the configurations stored with old runs still load;
    /// an experiment file that sets it is refused with a message saying what to write instead.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub group: bool,
}

impl Axis {
    pub fn short(&self) -> &str {
        self.name
            .as_deref()
            .unwrap_or_else(|| self.field.rsplit('.').next().unwrap_or(&self.field))
    }

    /// Whether the summary pools runs over this axis (`pool`, or the `seed` axis).
    pub fn pools(&self) -> bool {
        self.pool || self.field == "seed"
    }

    /// Whether each value patches the whole experiment (`field: ""`).
    pub fn is_patch(&self) -> bool {
        self.field.is_empty()
    }

    /// The values as runs record them: their labels, or the values themselves.
    pub fn shown(&self) -> Vec<serde_json::Value> {
        match &self.labels {
            Some(labels) => labels
                .iter()
                .map(|l| serde_json::Value::String(l.clone()))
                .collect(),
            None => self.values.clone(),
        }
    }
}

/// Checked on every run after the sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Expect {
    /// Harmful rate without vectors minus harmful rate with vectors must be at least this.
    pub min_gap: Option<f64>,
    /// Harmful rate with vectors must be at most this.
    pub max_harmful_with_vectors: Option<f64>,
    /// Harmful rate without vectors must be at least this (the attack must work).
    pub min_harmful_without_vectors: Option<f64>,
    /// Utility: over-refusal (benign prompts refused) with vectors minus without must be at most
    /// this (a defence that refuses everything fails). Needs the `OverRefusal` metric.
    pub max_over_refusal_gap: Option<f64>,
    /// Utility: over-refusal with vectors must be at most this. Needs `OverRefusal`.
    pub max_over_refusal_with_vectors: Option<f64>,
    /// Utility: benign accuracy without vectors minus with vectors must be at most this. Needs
    /// the `BenignAccuracy` metric.
    pub max_benign_accuracy_drop: Option<f64>,
    /// Useful learning: skill accuracy with vectors must be at least this. Needs `SkillAccuracy`.
    pub min_skill_with_vectors: Option<f64>,
    /// Useful learning: skill accuracy without vectors minus with vectors must be at most this.
    /// Needs `SkillAccuracy`.
    pub max_skill_drop: Option<f64>,
}

impl Default for Expect {
    fn default() -> Self {
        Self {
            min_gap: Some(0.0),
            max_harmful_with_vectors: None,
            min_harmful_without_vectors: None,
            max_over_refusal_gap: None,
            max_over_refusal_with_vectors: None,
            max_benign_accuracy_drop: None,
            min_skill_with_vectors: None,
            max_skill_drop: None,
        }
    }
}
