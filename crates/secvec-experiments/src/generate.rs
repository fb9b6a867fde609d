//! `generate`: a reply from a model, with the chat template unless `--raw`.

use std::time::Instant;

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use secvec_models::{GenerationConfig, Message, Sampling, generate};

use crate::backend::{BackendKind, Job};
use crate::model_args::{AdapterArgs, ModelArgs};

#[derive(clap::Args, Debug, Clone)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub adapters: AdapterArgs,
    /// The user message (repeat for a batch of prompts).
    #[arg(long, required = true)]
    prompt: Vec<String>,
    /// A system message (default: the chat template's own).
    #[arg(long)]
    system: Option<String>,
    /// Use the prompt text as is, without the chat template.
    #[arg(long)]
    raw: bool,
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 means greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Nucleus mass for sampling.
    #[arg(long, default_value_t = 0.9)]
    top_p: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl Job for GenerateArgs {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device, backend: BackendKind) -> Result<()> {
        // The adapters go in before bf16/f16 weights are cast, so they are cast with them.
        let (_, mut loaded) = self.model.load::<B::InnerBackend>(&device, backend)?;
        self.adapters.apply(&mut loaded.model)?;
        loaded.model = loaded.model.with_half_weights();
        let tok = &loaded.tokenizer;
        let prompts = self
            .prompt
            .iter()
            .map(|p| {
                let text = if self.raw {
                    p.clone()
                } else {
                    let mut msgs = Vec::new();
                    if let Some(s) = &self.system {
                        msgs.push(Message::system(s));
                    }
                    msgs.push(Message::user(p));
                    tok.apply_chat_template(&msgs, true)?
                };
                Ok(tok.encode(&text)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let sampling = if self.temperature > 0.0 {
            Sampling::TopP {
                temperature: self.temperature,
                top_p: self.top_p,
                seed: self.seed,
            }
        } else {
            Sampling::Greedy
        };
        let config = GenerationConfig {
            max_new_tokens: self.max_new_tokens,
            sampling,
            stop_tokens: tok.special.eos.clone(),
        };
        let t1 = Instant::now();
        let outputs = generate(&loaded.model, &prompts, tok.pad_id(), &config)?;
        let secs = t1.elapsed().as_secs_f64();
        let new_tokens: usize = outputs.iter().map(|o| o.tokens.len()).sum();
        for (prompt, out) in self.prompt.iter().zip(&outputs) {
            if self.prompt.len() > 1 {
                println!("### {prompt}");
            }
            println!("{}", tok.decode(&out.tokens, true)?);
        }
        eprintln!(
            "{new_tokens} new tokens in {secs:.2}s ({:.1} tokens/s)",
            new_tokens as f64 / secs.max(1e-9)
        );
        Ok(())
    }
}
