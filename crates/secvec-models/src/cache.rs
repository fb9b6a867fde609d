//! Key/value cache for incremental decoding.

use burn::tensor::{Tensor, backend::Backend};

/// Cached keys and values of one decoder layer, `[batch, kv_heads, past, head_dim]`.
#[derive(Debug, Clone)]
pub struct LayerCache<B: Backend> {
    pub keys: Tensor<B, 4>,
    pub values: Tensor<B, 4>,
}

/// Per-layer key/value cache. Empty until the first forward pass fills it.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<LayerCache<B>>>,
}

impl<B: Backend> KvCache<B> {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
        }
    }

    /// Number of cached positions (0 when empty).
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map(|l| l.keys.dims()[2])
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends this step's keys and values to layer `layer` and returns all keys and values.
    pub fn append(
        &mut self,
        layer: usize,
        keys: Tensor<B, 4>,
        values: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let entry = &mut self.layers[layer];
        let (keys, values) = match entry.take() {
            None => (keys, values),
            Some(past) => (
                Tensor::cat(vec![past.keys, keys], 2),
                Tensor::cat(vec![past.values, values], 2),
            ),
        };
        *entry = Some(LayerCache {
            keys: keys.clone(),
            values: values.clone(),
        });
        (keys, values)
    }

    /// Keeps only the batch rows in `rows` (used to drop finished sequences).
    pub fn retain_rows(&mut self, rows: burn::tensor::Tensor<B, 1, burn::tensor::Int>) {
        for layer in self.layers.iter_mut().flatten() {
            layer.keys = layer.keys.clone().select(0, rows.clone());
            layer.values = layer.values.clone().select(0, rows.clone());
        }
    }
}
