//! The models a run evaluates, as one typed vocabulary shared by the runner, the report and the
//! expectations. On disk (`stages/<stage>.json`, `metrics.json`) a stage is still its name, so
//! results written before this type existed read back unchanged.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::schema::Arm;

/// One evaluated model of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// The model as downloaded (`shipped`).
    Shipped,
    /// After the alignment stage (`aligned`).
    Aligned,
    /// The aligned model with the security vectors switched on (`vectors-on`).
    VectorsOn,
    /// After the attack of one arm, evaluated with the vectors off (`attacked-off`,
    /// `attacked-active`).
    Attacked(Arm),
    /// The attacked model of one arm with the vectors switched on
    /// (`attacked-active+vectors-on`).
    AttackedVectorsOn(Arm),
}

impl Stage {
    /// Its name in files and tables.
    pub fn name(self) -> String {
        match self {
            Stage::Shipped => "shipped".into(),
            Stage::Aligned => "aligned".into(),
            Stage::VectorsOn => "vectors-on".into(),
            Stage::Attacked(arm) => format!("attacked-{}", arm.as_str()),
            Stage::AttackedVectorsOn(arm) => format!("attacked-{}+vectors-on", arm.as_str()),
        }
    }

    /// The stage of a name; `None` for a name no stage has.
    pub fn parse(name: &str) -> Option<Stage> {
        let arm = |s: &str| match s {
            "off" => Some(Arm::Off),
            "active" => Some(Arm::Active),
            _ => None,
        };
        match name {
            "shipped" => Some(Stage::Shipped),
            "aligned" => Some(Stage::Aligned),
            "vectors-on" => Some(Stage::VectorsOn),
            _ => {
                let rest = name.strip_prefix("attacked-")?;
                match rest.strip_suffix("+vectors-on") {
                    Some(a) => arm(a).map(Stage::AttackedVectorsOn),
                    None => arm(rest).map(Stage::Attacked),
                }
            }
        }
    }

    /// The attack arm the model comes from.
    pub fn arm(self) -> Option<Arm> {
        match self {
            Stage::Attacked(a) | Stage::AttackedVectorsOn(a) => Some(a),
            _ => None,
        }
    }

    /// Whether the security vectors are switched on in this model (such a model is harmful by
    /// construction, so out-of-distribution harm is not measured on it).
    pub fn vectors_on(self) -> bool {
        matches!(self, Stage::VectorsOn | Stage::AttackedVectorsOn(_))
    }

    /// Order of a run's stages in `metrics.json` and the tables: the pipeline's order, then the
    /// attacked models with the vectors on, by name.
    pub fn sort_key(self) -> (u8, String) {
        let rank = match self {
            Stage::Shipped => 0,
            Stage::Aligned => 1,
            Stage::VectorsOn => 2,
            Stage::Attacked(Arm::Off) => 3,
            Stage::Attacked(Arm::Active) => 4,
            Stage::AttackedVectorsOn(_) => 9,
        };
        (rank, self.name())
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl Serialize for Stage {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

impl<'de> Deserialize<'de> for Stage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Stage::parse(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown stage `{name}` (expected shipped, aligned, vectors-on, attacked-<arm> or \
                 attacked-<arm>+vectors-on)"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_keep_the_file_format() {
        let all = [
            Stage::Shipped,
            Stage::Aligned,
            Stage::VectorsOn,
            Stage::Attacked(Arm::Off),
            Stage::Attacked(Arm::Active),
            Stage::AttackedVectorsOn(Arm::Off),
            Stage::AttackedVectorsOn(Arm::Active),
        ];
        for s in all {
            assert_eq!(Stage::parse(&s.name()), Some(s));
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.name()));
            assert_eq!(serde_json::from_str::<Stage>(&json).unwrap(), s);
        }
        assert_eq!(Stage::Attacked(Arm::Active).name(), "attacked-active");
        assert_eq!(
            Stage::AttackedVectorsOn(Arm::Off).name(),
            "attacked-off+vectors-on"
        );
        let err = serde_json::from_str::<Stage>("\"attacked-sideways\"").unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown stage `attacked-sideways`")
        );
    }
}
