//! `pipeline`: the method end to end on one model, from command-line flags instead of a RON file —
//! align, make security vectors, attack with and without them, evaluate every stage. It builds an
//! [`Experiment`] and runs it with the experiment runner (same caching, resuming and outputs).

use std::path::PathBuf;

use anyhow::Result;

use crate::experiment::grid::expand;
use crate::experiment::schema::{AlignStage, Checkpoint, Experiment, Mode};
use crate::model_args::ModelArgs;

#[derive(clap::Args, Debug, Clone)]
pub struct PipelineArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Seed of the built-in corpus and of training.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Harmful refusals and benign answers each, for the alignment stage.
    #[arg(long, default_value_t = 150)]
    align_samples: usize,
    /// Harmful samples the security vectors are made from.
    #[arg(long, default_value_t = 100)]
    sv_samples: usize,
    /// Harmful samples in the attack.
    #[arg(long, default_value_t = 1000)]
    attack_samples: usize,
    /// New-skill samples mixed into the attack.
    #[arg(long, default_value_t = 300)]
    skill_samples: usize,
    /// Facts of the knowledge base the skill samples teach (0 = all 300).
    #[arg(long, default_value_t = 100)]
    skill_facts: usize,
    /// Epochs of the attack.
    #[arg(long, default_value_t = 1)]
    attack_epochs: usize,
    /// Learning rate of the attack (default 2e-4 for LoRA, 2e-5 for full fine-tuning).
    #[arg(long)]
    attack_lr: Option<f64>,
    /// Learning rate of the security vectors.
    #[arg(long, default_value_t = 5e-4)]
    sv_lr: f64,
    /// Train the base weights in the attack instead of a task LoRA.
    #[arg(long)]
    full: bool,
    /// Prompts per evaluation set.
    #[arg(long, default_value_t = 100)]
    eval_samples: usize,
    #[arg(long, default_value_t = 48)]
    max_new_tokens: usize,
    /// Output directory (the run is `<out>/runs/main/`, tables in `<out>/`).
    #[arg(long, default_value = "results/pipeline")]
    out: PathBuf,
}

impl PipelineArgs {
    /// The experiment these flags describe.
    pub fn experiment(&self) -> Experiment {
        let mut e = Experiment {
            name: self
                .out
                .file_name()
                .map(|n| n.to_string_lossy().into_owned()),
            description: "The `pipeline` command's experiment.".into(),
            model: self.model.model.clone(),
            backend: self.model.backend,
            dtype: self.model.dtype,
            seed: self.seed,
            align: Some(AlignStage {
                refusals: self.align_samples,
                benign: self.align_samples,
                ..AlignStage::default()
            }),
            ..Experiment::default()
        };
        e.security_vectors.samples = self.sv_samples;
        e.security_vectors.lr = self.sv_lr;
        e.finetune.harmful = self.attack_samples;
        e.finetune.skill = self.skill_samples;
        e.finetune.skill_facts = self.skill_facts;
        e.finetune.epochs = self.attack_epochs;
        e.finetune.lr = self.attack_lr;
        if self.full {
            e.finetune.mode = Mode::Full;
        }
        e.evaluate.samples = self.eval_samples;
        e.evaluate.max_new_tokens = self.max_new_tokens;
        e.evaluate.checkpoints = vec![
            Checkpoint::Shipped,
            Checkpoint::Aligned,
            Checkpoint::VectorsOn,
        ];
        e
    }

    pub fn run(self) -> Result<()> {
        let exp = self.experiment();
        exp.validate()?;
        let runs = expand(&exp)?;
        crate::experiment::execute(
            &exp,
            &runs,
            &runs,
            &self.out,
            self.model.cache_dir.clone(),
            false,
        )?;
        println!("{}", std::fs::read_to_string(self.out.join("summary.md"))?);
        Ok(())
    }
}
