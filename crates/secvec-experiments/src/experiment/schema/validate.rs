//! The experiment's methods: its name, data paths resolved against its file, and the checks of
//! its values, each error naming its field.

use std::path::Path;

use anyhow::{Result, bail};

use super::*;

impl Experiment {
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("experiment")
    }

    fn sources_mut(&mut self) -> Vec<&mut Source> {
        let mut v = vec![
            &mut self.security_vectors.data,
            &mut self.finetune.harmful_data,
            &mut self.finetune.skill_data,
            &mut self.evaluate.harmful_data,
            &mut self.evaluate.benign_data,
            &mut self.evaluate.skill_data,
        ];
        if let Some(a) = self.align.as_mut() {
            v.push(&mut a.refusal_data);
            v.push(&mut a.benign_data);
        }
        v
    }

    pub(super) fn resolve_paths(&mut self, base: &Path) {
        for s in self.sources_mut() {
            if let Source::File { path, .. } = s
                && path.is_relative()
                && !path.exists()
            {
                *path = base.join(&*path);
            }
        }
        if let Some(path) = self.evaluate.advbench.as_mut()
            && path.is_relative()
            && !path.exists()
        {
            *path = base.join(&*path);
        }
    }

    /// Checks values a type cannot: ranges, names, consistency. Messages name the field.
    pub fn validate(&self) -> Result<()> {
        if self.dtype != Precision::F32 && self.backend == BackendKind::Ndarray {
            bail!(
                "dtype: {} needs half-precision kernels, which the ndarray backend lacks; use \
                 `backend: flex` (CPU) or a GPU backend",
                self.dtype
            );
        }
        if self.max_len < 8 {
            bail!("max_len: must be at least 8, got {}", self.max_len);
        }
        let check_targets = |field: &str, targets: &[String]| -> Result<()> {
            let cfg = secvec_core::adapter::AdapterConfig {
                targets: targets.to_vec(),
                ..Default::default()
            };
            cfg.target_kinds()
                .map(|_| ())
                .map_err(|e| anyhow::anyhow!("{field}: {e}"))
        };
        let positive = |field: &str, v: f64| -> Result<()> {
            if !(v > 0.0 && v.is_finite()) {
                bail!("{field}: must be a positive number, got {v}");
            }
            Ok(())
        };
        let nonzero = |field: &str, v: usize| -> Result<()> {
            if v == 0 {
                bail!("{field}: must be at least 1");
            }
            Ok(())
        };
        if let Some(a) = &self.align {
            check_targets("align.targets", &a.targets)?;
            positive("align.lr", a.lr)?;
            positive("align.alpha", a.alpha)?;
            nonzero("align.rank", a.rank)?;
            nonzero("align.epochs", a.epochs)?;
            nonzero("align.batch_size", a.batch_size)?;
            if a.refusals + a.benign == 0 {
                bail!(
                    "align: refusals and benign are both 0; write `align: None` to skip alignment"
                );
            }
        }
        let sv = &self.security_vectors;
        check_targets("security_vectors.targets", &sv.targets)?;
        positive("security_vectors.lr", sv.lr)?;
        positive("security_vectors.alpha", sv.alpha)?;
        nonzero("security_vectors.rank", sv.rank)?;
        nonzero("security_vectors.epochs", sv.epochs)?;
        nonzero("security_vectors.batch_size", sv.batch_size)?;
        if let VectorKind::Steering {
            layers,
            coefficient,
        } = &sv.kind
        {
            if layers.is_empty() {
                bail!("security_vectors.kind: Steering needs at least one layer in `layers`");
            }
            if !coefficient.is_finite() {
                bail!(
                    "security_vectors.kind: Steering's coefficient must be finite, got {coefficient}"
                );
            }
            if sv.benign > 0 {
                bail!(
                    "security_vectors.benign: benign samples train LoRA vectors; steering \
                     directions contrast compliant answers with refusals (set benign: 0)"
                );
            }
            if !sv.data.is_builtin() {
                bail!(
                    "security_vectors.data: Steering needs a refusal of each harmful prompt, \
                     which only the built-in corpus has"
                );
            }
        }
        let ft = &self.finetune;
        if let Mode::Lora {
            rank,
            alpha,
            targets,
        } = &ft.mode
        {
            check_targets("finetune.mode.targets", targets)?;
            nonzero("finetune.mode.rank", *rank)?;
            positive("finetune.mode.alpha", *alpha)?;
        }
        positive("finetune.lr", ft.learning_rate())?;
        nonzero("finetune.epochs", ft.epochs)?;
        nonzero("finetune.batch_size", ft.batch_size)?;
        let (h, s) = ft.counts()?;
        if h + s == 0 {
            bail!("finetune: no samples (harmful and skill are both 0)");
        }
        if ft.arms.is_empty() {
            bail!("finetune.arms: give at least one of Off, Active");
        }
        let hallucination_metrics = [Metric::HallucinationRate, Metric::WrongAnswersLearned];
        match self.behaviour {
            Behaviour::Harmful => {
                if let Some(m) = hallucination_metrics
                    .iter()
                    .find(|m| self.evaluate.metrics.contains(m))
                {
                    bail!("evaluate.metrics: {m:?} needs `behaviour: Hallucination`");
                }
            }
            Behaviour::Hallucination | Behaviour::WrongCapitals => {
                let b = self.behaviour;
                if !self.evaluate.metrics.contains(&Metric::HallucinationRate) {
                    bail!(
                        "evaluate.metrics: `behaviour: {b:?}` is measured by \
                         HallucinationRate; add it (and WrongAnswersLearned)"
                    );
                }
                if self.finetune.safety > 0 {
                    bail!(
                        "finetune.safety: SafeInstr's demonstrations are refusals, which do not \
                         counter wrong answers (`behaviour: {b:?}`)"
                    );
                }
            }
        }
        if self.finetune.skill_task == SkillTask::Capitals
            && (self.behaviour != Behaviour::WrongCapitals
                || !self.finetune.skill_data.is_builtin())
        {
            bail!(
                "finetune.skill_task: Capitals (the true capitals of the built-in countries) needs \
                 `behaviour: WrongCapitals` and the built-in skill data"
            );
        }
        if let Some(v) = self.align.as_ref().and_then(|a| a.vaccine.as_ref()) {
            v.validate()
                .map_err(|e| anyhow::anyhow!("align.vaccine.{e}"))?;
        }
        if !ft.safety_with_vectors {
            if ft.safety == 0 {
                bail!(
                    "finetune.safety_with_vectors: false trains SafeInstr's demonstrations with the \
                     vectors off, and `finetune.safety` is 0 (no demonstrations)"
                );
            }
            if ft.lisa.is_some() {
                bail!(
                    "finetune.safety_with_vectors: false is not supported together with \
                     `finetune.lisa`"
                );
            }
        }
        if let Some(lisa) = &ft.lisa {
            lisa.validate()
                .map_err(|e| anyhow::anyhow!("finetune.lisa.{e}"))?;
            if self.align.is_none() {
                bail!(
                    "finetune.lisa: Lisa alternates with the defender's alignment data, and \
                     `align` is None (set `align: Some((..))`)"
                );
            }
        }
        let ev = &self.evaluate;
        if ev.metrics.is_empty() {
            bail!("evaluate.metrics: give at least one metric");
        }
        nonzero("evaluate.max_new_tokens", ev.max_new_tokens)?;
        nonzero("evaluate.batch_size", ev.batch_size)?;
        if !["secvec", "gcg"].contains(&ev.judge.as_str()) {
            bail!(
                "evaluate.judge: `{}` is not a judge (secvec or gcg)",
                ev.judge
            );
        }
        self.validate_sweep()?;
        if let Some(e) = &self.expect
            && !(ft.arms.contains(&Arm::Off) && ft.arms.contains(&Arm::Active))
            && (e.min_gap.is_some() || e.max_harmful_with_vectors.is_some())
        {
            bail!("expect: needs both finetune.arms Off and Active");
        }
        if let Some(e) = &self.expect {
            // (field, bound, the metric it needs, whether it compares the two arms)
            let needs = [
                (
                    "max_over_refusal_gap",
                    e.max_over_refusal_gap,
                    Metric::OverRefusal,
                    true,
                ),
                (
                    "max_over_refusal_with_vectors",
                    e.max_over_refusal_with_vectors,
                    Metric::OverRefusal,
                    false,
                ),
                (
                    "max_benign_accuracy_drop",
                    e.max_benign_accuracy_drop,
                    Metric::BenignAccuracy,
                    true,
                ),
                (
                    "min_skill_with_vectors",
                    e.min_skill_with_vectors,
                    Metric::SkillAccuracy,
                    false,
                ),
                (
                    "max_skill_drop",
                    e.max_skill_drop,
                    Metric::SkillAccuracy,
                    true,
                ),
            ];
            for (field, bound, metric, both_arms) in needs {
                if bound.is_none() {
                    continue;
                }
                if !ev.metrics.contains(&metric) {
                    bail!("expect.{field}: needs {metric:?} in evaluate.metrics");
                }
                if both_arms && !(ft.arms.contains(&Arm::Off) && ft.arms.contains(&Arm::Active)) {
                    bail!("expect.{field}: needs both finetune.arms Off and Active");
                }
            }
        }
        Ok(())
    }

    /// Checks the sweep's axes.
    pub fn validate_sweep(&self) -> Result<()> {
        if let Some(axis) = self.sweep.iter().find(|a| a.group) {
            bail!(
                "sweep: `group: true` on the axis `{}` is no longer read: it pooled the summary over \
                 every other axis, also over different treatments. Write `pool: true` on the axes \
                 whose runs repeat one treatment (e.g. the attack's learning rate) instead; the \
                 summary then pools over those, once per value of `{}`",
                axis.short(),
                axis.short()
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (i, axis) in self.sweep.iter().enumerate() {
            if axis.values.is_empty() {
                bail!("sweep[{i}] ({}): no values", axis.field);
            }
            if let Some(labels) = &axis.labels {
                if labels.len() != axis.values.len() {
                    bail!(
                        "sweep[{i}] ({}): {} labels for {} values",
                        axis.field,
                        labels.len(),
                        axis.values.len()
                    );
                }
                let unique: std::collections::HashSet<&String> = labels.iter().collect();
                if unique.len() != labels.len() {
                    bail!("sweep[{i}] ({}): labels repeat", axis.field);
                }
            }
            if axis.is_patch() {
                if axis.name.is_none() || axis.labels.is_none() {
                    bail!("sweep[{i}]: a patch axis (`field: \"\"`) needs a `name` and `labels`");
                }
                if let Some(j) = axis.values.iter().position(|v| !v.is_object()) {
                    bail!(
                        "sweep[{i}] ({}): value {j} is not a patch `{{...}}` of the experiment",
                        axis.short()
                    );
                }
            }
            if !seen.insert(axis.short().to_string()) {
                bail!(
                    "sweep[{i}] ({}): two axes share the short name `{}`; give one a `name`",
                    axis.field,
                    axis.short()
                );
            }
        }
        Ok(())
    }
}
