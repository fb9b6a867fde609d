//! Proportions with 95% Wilson score intervals.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The normal quantile of a two-sided 95% interval.
pub const Z95: f64 = 1.959964;

/// `count` out of `total`, with its 95% Wilson score interval.
///
/// With `total == 0` nothing was measured: the rate is 0 and the interval the uninformative
/// `(0, 1)`, so that no NaN reaches a report.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    pub count: usize,
    pub total: usize,
    pub rate: f64,
    pub ci95: (f64, f64),
}

impl Rate {
    /// The rate of `count` in `total` (`count` is capped at `total`).
    pub fn new(count: usize, total: usize) -> Self {
        let count = count.min(total);
        if total == 0 {
            return Self {
                count,
                total,
                rate: 0.0,
                ci95: (0.0, 1.0),
            };
        }
        Self {
            count,
            total,
            rate: count as f64 / total as f64,
            ci95: wilson(count, total, Z95),
        }
    }

    /// The rate of `true` among `flags`.
    pub fn of(flags: impl IntoIterator<Item = bool>) -> Self {
        let (mut count, mut total) = (0, 0);
        for f in flags {
            total += 1;
            count += usize::from(f);
        }
        Self::new(count, total)
    }
}

impl fmt::Display for Rate {
    /// `12.5% (25/200, 95% CI 8.6–17.8%)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.1}% ({}/{}, 95% CI {:.1}–{:.1}%)",
            100.0 * self.rate,
            self.count,
            self.total,
            100.0 * self.ci95.0,
            100.0 * self.ci95.1
        )
    }
}

/// The Wilson score interval of `count` successes in `total > 0` trials at normal quantile `z`:
/// `(p + z²/2n ± z·sqrt(p(1−p)/n + z²/4n²)) / (1 + z²/n)`, clamped to `[0, 1]`.
pub fn wilson(count: usize, total: usize, z: f64) -> (f64, f64) {
    if total == 0 {
        return (0.0, 1.0);
    }
    let n = total as f64;
    let p = count.min(total) as f64 / n;
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let center = (p + z2 / (2.0 * n)) / denom;
    let half = z / denom * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((center - half).max(0.0), (center + half).min(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(r: Rate, lo: f64, hi: f64) {
        assert!(
            (r.ci95.0 - lo).abs() < 5e-5 && (r.ci95.1 - hi).abs() < 5e-5,
            "{r:?} vs ({lo}, {hi})"
        );
    }

    #[test]
    fn wilson_known_values() {
        close(Rate::new(0, 10), 0.0, 0.2775);
        close(Rate::new(5, 10), 0.2366, 0.7634);
        close(Rate::new(50, 100), 0.4038, 0.5962);
        close(Rate::new(98, 100), 0.9300, 0.9945);
        close(Rate::new(10, 10), 0.7225, 1.0);
        close(Rate::new(3, 200), 0.0051, 0.0432);
    }

    #[test]
    fn empty_is_zero_with_full_interval() {
        let r = Rate::new(0, 0);
        assert_eq!((r.rate, r.ci95), (0.0, (0.0, 1.0)));
        assert!(r.to_string().starts_with("0.0% (0/0"));
    }

    #[test]
    fn of_counts_flags() {
        let r = Rate::of([true, false, true, true]);
        assert_eq!((r.count, r.total, r.rate), (3, 4, 0.75));
    }
}
