//! Key/value cache for incremental decoding, preallocated.
//!
//! Each layer keeps its keys and values token-major, `[batch, capacity, kv_heads, head_dim]`,
//! with room for the whole generation; a decoding step writes its new position in place and
//! hands attention a view of the filled part. (Concatenating the cache with the new step, as a
//! first version did, copied every layer's whole cache at every step.)

use burn::tensor::{Int, Tensor, backend::Backend};

/// Cached keys and values of one decoder layer, `[batch, capacity, kv_heads, head_dim]`, of
/// which the first `len` positions are filled.
#[derive(Debug, Clone)]
pub struct LayerCache<B: Backend> {
    pub keys: Tensor<B, 4>,
    pub values: Tensor<B, 4>,
    pub len: usize,
}

/// Per-layer key/value cache. Empty until the first forward pass fills it.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<LayerCache<B>>>,
    /// Positions to allocate on the first append (it grows by doubling if exceeded).
    capacity: usize,
}

impl<B: Backend> KvCache<B> {
    /// A cache that allocates room for the positions of its first append only (and grows).
    pub fn new(num_layers: usize) -> Self {
        Self::with_capacity(num_layers, 0)
    }

    /// A cache with room for `capacity` positions per layer (prompt + new tokens).
    pub fn with_capacity(num_layers: usize, capacity: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            capacity,
        }
    }

    /// Number of cached positions (0 when empty).
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map(|l| l.len)
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes this step's keys and values (`[batch, seq, kv_heads, head_dim]`) after the cached
    /// ones of layer `layer` and returns views of all of them, `[batch, len + seq, kv_heads,
    /// head_dim]`.
    pub fn append(
        &mut self,
        layer: usize,
        keys: Tensor<B, 4>,
        values: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [batch, seq, kv_heads, head_dim] = keys.dims();
        let capacity = self.capacity;
        let entry = &mut self.layers[layer];
        let mut cache = match entry.take() {
            Some(c) => c,
            None => {
                let cap = capacity.max(seq);
                let device = keys.device();
                let zeros = || {
                    Tensor::<B, 4>::zeros([batch, cap, kv_heads, head_dim], (&device, keys.dtype()))
                };
                LayerCache {
                    keys: zeros(),
                    values: zeros(),
                    len: 0,
                }
            }
        };
        let cap = cache.keys.dims()[1];
        if cache.len + seq > cap {
            let grow = (cache.len + seq).max(2 * cap) - cap;
            let pad = Tensor::<B, 4>::zeros(
                [batch, grow, kv_heads, head_dim],
                (&keys.device(), keys.dtype()),
            );
            cache.keys = Tensor::cat(vec![cache.keys, pad.clone()], 1);
            cache.values = Tensor::cat(vec![cache.values, pad], 1);
        }
        let (start, end) = (cache.len, cache.len + seq);
        let at = [0..batch, start..end, 0..kv_heads, 0..head_dim];
        // In place when the previous step's views are gone (they are, after its forward pass).
        cache.keys = cache.keys.slice_assign(at.clone(), keys);
        cache.values = cache.values.slice_assign(at, values);
        cache.len = end;
        let out = (
            cache.keys.clone().narrow(1, 0, end),
            cache.values.clone().narrow(1, 0, end),
        );
        *entry = Some(cache);
        out
    }

    /// Keeps only the batch rows in `rows` (used to drop finished sequences).
    pub fn retain_rows(&mut self, rows: Tensor<B, 1, Int>) {
        for layer in self.layers.iter_mut().flatten() {
            layer.keys = layer.keys.clone().select(0, rows.clone());
            layer.values = layer.values.clone().select(0, rows.clone());
        }
    }
}
