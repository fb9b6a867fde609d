//! AdamW with decoupled weight decay (Loshchilov & Hutter; PyTorch's `torch.optim.AdamW` and
//! burn-optim's `AdamW` compute the same update), fused per parameter.
//!
//! burn-optim's optimizer makes about fourteen tensor passes per parameter, each on one thread,
//! plus one more per parameter for clipping; here clipping (and f16 unscaling) is a factor on
//! the gradient inside a single fused pass ([`secvec_models::kernels::adamw_update`]), which on
//! Flex runs in place on both cores. The gradient norm is one sum-of-squares pass per parameter.

use std::any::Any;
use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, backend::AutodiffBackend};

use secvec_models::Llama;

use crate::checkpoint::host;
use secvec_models::kernels::{self, AdamWStep};

/// AdamW's hyper-parameters and moments.
pub struct AdamW {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Steps taken (for the bias corrections).
    step: i32,
    /// `(m, v)` per parameter, as `(Tensor<Inner, D>, Tensor<Inner, D>)` behind `Any` (the
    /// parameters have different ranks).
    moments: HashMap<ParamId, Box<dyn Any + Send>>,
}

impl AdamW {
    pub fn new(beta1: f32, beta2: f32, eps: f32, weight_decay: f32) -> Self {
        Self {
            beta1,
            beta2,
            eps,
            weight_decay,
            step: 0,
            moments: HashMap::new(),
        }
    }

    /// Updates every parameter of `model` that has a gradient in `grads`, with the gradients
    /// multiplied by `grad_scale` first.
    pub fn step<B: AutodiffBackend>(
        &mut self,
        lr: f64,
        model: Llama<B>,
        mut grads: GradientsParams,
        grad_scale: f64,
    ) -> Llama<B> {
        self.step += 1;
        let s = AdamWStep {
            lr: lr as f32,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            bias1: 1.0 - self.beta1.powi(self.step),
            bias2: 1.0 - self.beta2.powi(self.step),
            grad_scale: grad_scale as f32,
        };
        let mut mapper = Update::<B> {
            grads: &mut grads,
            moments: &mut self.moments,
            s,
            _b: std::marker::PhantomData,
        };
        model.map(&mut mapper)
    }
}

struct Update<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    moments: &'a mut HashMap<ParamId, Box<dyn Any + Send>>,
    s: AdamWStep,
    _b: std::marker::PhantomData<B>,
}

type Moments<B, const D: usize> = (
    Tensor<<B as AutodiffBackend>::InnerBackend, D>,
    Tensor<<B as AutodiffBackend>::InnerBackend, D>,
);

impl<B: AutodiffBackend> ModuleMapper<B> for Update<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) else {
            return param;
        };
        let (id, tensor, mapper) = param.consume();
        let require_grad = tensor.is_require_grad();
        let inner = tensor.inner();
        let (m, v): Moments<B, D> = match self.moments.remove(&id) {
            Some(b) => *b
                .downcast::<Moments<B, D>>()
                .expect("a parameter keeps its rank and backend"),
            None => (inner.zeros_like(), inner.zeros_like()),
        };
        let (p, m, v) = kernels::adamw_update(inner, grad, m, v, self.s);
        self.moments.insert(id, Box::new((m, v)));
        let mut t = Tensor::from_inner(p);
        if require_grad {
            t = t.require_grad();
        }
        Param::from_mapped_value(id, t, mapper)
    }
}

/// Sums squared gradients over every parameter that has one.
struct GradNorm<'a> {
    grads: &'a GradientsParams,
    sum: f64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            self.sum += kernels::sum_squares(g);
        }
    }
}

/// The global L2 norm of all gradients (as `torch.nn.utils.clip_grad_norm_` computes it).
pub fn global_grad_norm<B: AutodiffBackend>(model: &Llama<B>, grads: &GradientsParams) -> f64 {
    let mut v = GradNorm { grads, sum: 0.0 };
    model.visit(&mut v);
    v.sum.sqrt()
}

/// Named host tensors: `(name, shape, values)`.
pub(crate) type Named = Vec<(String, Vec<usize>, Vec<f32>)>;

/// The moments of the trainable parameters, keyed by position among them (`m.<i>`, `v.<i>`).
struct ExportMoments<'a> {
    moments: &'a HashMap<ParamId, Box<dyn Any + Send>>,
    out: Named,
    index: usize,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for ExportMoments<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if !param.val().is_require_grad() {
            return;
        }
        let i = self.index;
        self.index += 1;
        if let Some((m, v)) = self
            .moments
            .get(&param.id)
            .and_then(|b| b.downcast_ref::<Moments<B, D>>())
        {
            self.out
                .push((format!("m.{i}"), m.dims().to_vec(), host(m.clone())));
            self.out
                .push((format!("v.{i}"), v.dims().to_vec(), host(v.clone())));
        }
    }
}

struct ImportMoments<'a> {
    tensors: &'a HashMap<String, (Vec<f32>, Vec<usize>)>,
    moments: HashMap<ParamId, Box<dyn Any + Send>>,
    index: usize,
    problem: Option<String>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for ImportMoments<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let p = param.val();
        if !p.is_require_grad() {
            return;
        }
        let i = self.index;
        self.index += 1;
        let (Some(m), Some(v)) = (
            self.tensors.get(&format!("m.{i}")),
            self.tensors.get(&format!("v.{i}")),
        ) else {
            return;
        };
        let inner = p.inner();
        let dims = inner.dims();
        let make = |(values, shape): &(Vec<f32>, Vec<usize>)| {
            (shape.as_slice() == dims.as_slice()).then(|| {
                Tensor::<B::InnerBackend, D>::from_data(
                    burn::tensor::TensorData::new(values.clone(), dims),
                    &inner.device(),
                )
                .cast(inner.dtype())
            })
        };
        match (make(m), make(v)) {
            (Some(m), Some(v)) => {
                let moments: Moments<B, D> = (m, v);
                self.moments.insert(param.id, Box::new(moments));
            }
            _ => {
                self.problem
                    .get_or_insert_with(|| format!("the moments `m.{i}`/`v.{i}` have another shape than the parameter's {dims:?}"));
            }
        }
    }
}

impl AdamW {
    /// The moments of the trainable parameters of `model` (for a training checkpoint).
    pub(crate) fn export_moments<B: AutodiffBackend>(&self, model: &Llama<B>) -> Named {
        let mut v = ExportMoments {
            moments: &self.moments,
            out: Vec::new(),
            index: 0,
        };
        model.visit(&mut v);
        v.out
    }

    /// Steps taken.
    pub(crate) fn steps_taken(&self) -> i32 {
        self.step
    }

    /// Restores the moments of `export_moments` and the step count.
    pub(crate) fn import_moments<B: AutodiffBackend>(
        &mut self,
        model: &Llama<B>,
        step: i32,
        tensors: &HashMap<String, (Vec<f32>, Vec<usize>)>,
    ) -> Result<(), String> {
        let mut v = ImportMoments {
            tensors,
            moments: HashMap::new(),
            index: 0,
            problem: None,
        };
        model.visit(&mut v);
        if let Some(p) = v.problem {
            return Err(p);
        }
        self.moments = v.moments;
        self.step = step;
        Ok(())
    }
}
