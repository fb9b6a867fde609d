//! Harmful/benign mixtures for fine-tuning: the community's "n samples, a fraction p of them
//! harmful" protocol ([`mix`]) and explicit counts ([`mix_counts`]). Samples are drawn without
//! replacement and the result is shuffled, deterministically for a seed.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};

use super::{DataError, Sample};

/// `n` samples of which `round(n·p)` are drawn from `harmful` and the rest from `benign`,
/// shuffled. Errors if `p` is not in `[0, 1]` or either pool is too small.
pub fn mix(
    harmful: &[Sample],
    benign: &[Sample],
    n: usize,
    p: f64,
    seed: u64,
) -> Result<Vec<Sample>, DataError> {
    if !(0.0..=1.0).contains(&p) {
        return Err(DataError::Invalid(format!(
            "the harmful fraction must be in [0, 1], got {p}"
        )));
    }
    let n_harmful = (n as f64 * p).round() as usize;
    mix_counts(harmful, n_harmful, benign, n - n_harmful.min(n), seed)
}

/// `n_harmful` samples drawn from `harmful` and `n_benign` from `benign`, shuffled together.
pub fn mix_counts(
    harmful: &[Sample],
    n_harmful: usize,
    benign: &[Sample],
    n_benign: usize,
    seed: u64,
) -> Result<Vec<Sample>, DataError> {
    for (what, needed, available) in [
        ("harmful", n_harmful, harmful.len()),
        ("benign", n_benign, benign.len()),
    ] {
        if needed > available {
            return Err(DataError::NotEnough {
                what,
                needed,
                available,
            });
        }
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out: Vec<Sample> = Vec::with_capacity(n_harmful + n_benign);
    out.extend(harmful.choose_multiple(&mut rng, n_harmful).cloned());
    out.extend(benign.choose_multiple(&mut rng, n_benign).cloned());
    out.shuffle(&mut rng);
    Ok(out)
}
