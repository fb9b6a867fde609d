//! What a run still has to compute, decided once from the stage files an earlier attempt left.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::record::{StageRecord, read_json};
use super::schema::{Arm, Checkpoint, Experiment};
use super::stage::Stage;

/// What a run still has to compute, decided once from the stage files an earlier attempt left.
pub(super) struct Plan {
    /// The evaluated models the run reports, in pipeline order.
    pub(super) wanted: Vec<Stage>,
    /// Records read back from an earlier attempt.
    pub(super) done: HashMap<Stage, StageRecord>,
    /// Security vectors from 0 samples: the `active` arm is the plain attack, so it is not
    /// trained but reported as the same model as the `off` arm.
    pub(super) no_vectors: bool,
}

impl Plan {
    pub(super) fn new(exp: &Experiment, stages_dir: &Path) -> Result<Self> {
        let ev = &exp.evaluate;
        let no_vectors = exp.security_vectors.samples == 0;
        let mut wanted = Vec::new();
        if ev.checkpoints.contains(&Checkpoint::Shipped) {
            wanted.push(Stage::Shipped);
        }
        if ev.checkpoints.contains(&Checkpoint::Aligned) {
            wanted.push(Stage::Aligned);
        }
        if !no_vectors && ev.checkpoints.contains(&Checkpoint::VectorsOn) {
            wanted.push(Stage::VectorsOn);
        }
        wanted.extend(exp.finetune.arms.iter().map(|&a| Stage::Attacked(a)));
        if ev.attacked_vectors_on && !no_vectors {
            wanted.extend(
                exp.finetune
                    .arms
                    .iter()
                    .map(|&a| Stage::AttackedVectorsOn(a)),
            );
        }
        let mut done = HashMap::new();
        for stage in &wanted {
            let p = stage_path(stages_dir, *stage);
            if p.is_file() {
                done.insert(*stage, read_json::<StageRecord>(&p)?);
            }
        }
        Ok(Self {
            wanted,
            done,
            no_vectors,
        })
    }

    /// Whether `stage` still has to be evaluated.
    pub(super) fn todo(&self, stage: Stage) -> bool {
        self.wanted.contains(&stage) && !self.done.contains_key(&stage)
    }

    /// Whether the aligned model has to be built (everything but the shipped model needs it).
    pub(super) fn needs_model(&self) -> bool {
        self.wanted
            .iter()
            .any(|&s| s != Stage::Shipped && self.todo(s))
    }

    /// Whether the attack of `arm` has to be trained: one of its models is still to evaluate,
    /// and it is not the `active` arm of a run without vectors.
    pub(super) fn trains(&self, arm: Arm) -> bool {
        !(self.no_vectors && arm == Arm::Active)
            && (self.todo(Stage::Attacked(arm)) || self.todo(Stage::AttackedVectorsOn(arm)))
    }
}

pub(super) fn stage_path(stages_dir: &Path, stage: Stage) -> PathBuf {
    stages_dir.join(format!("{stage}.json"))
}
