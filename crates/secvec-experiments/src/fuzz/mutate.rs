//! The mutator: a few random edits of a seed input, deterministic for `(seed, execution)` so
//! that any input can be made again from its number (`fuzz --replay`).
//!
//! Hand-written because the coverage-guided engines need nightly Rust (cargo-fuzz/libFuzzer) or
//! an external toolchain (AFL++); the targets here are parsers of length-prefixed binary
//! headers and of text, where blind mutation with boundary integers and a per-format
//! dictionary reaches the length and count checks that matter.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Integers at the edges of the types a header stores.
const INTERESTING: [u64; 16] = [
    0,
    1,
    2,
    7,
    8,
    16,
    255,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
];

/// The rng of one execution.
pub fn rng_for(seed: u64, target: &str, execution: u64) -> StdRng {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in target.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    StdRng::seed_from_u64(seed ^ h ^ execution.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// `base` with 1 to 8 random edits; `dict` holds tokens of the format, `other` is a second seed
/// to splice from.
pub fn mutate(base: &[u8], other: &[u8], dict: &[&str], rng: &mut StdRng) -> Vec<u8> {
    let mut v = base.to_vec();
    let edits = rng.random_range(1..=8);
    for _ in 0..edits {
        let len = v.len();
        let at = |rng: &mut StdRng| {
            if len == 0 {
                0
            } else {
                rng.random_range(0..len)
            }
        };
        match rng.random_range(0..11) {
            0 if len > 0 => {
                let i = at(rng);
                v[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = at(rng);
                v[i] = rng.random();
            }
            2 if len > 0 => {
                let i = at(rng);
                v[i] = [0u8, 1, 0x7f, 0x80, 0xff][rng.random_range(0..5)];
            }
            3 if len >= 8 => {
                // A boundary integer over 1, 2, 4 or 8 bytes, little-endian (GGUF's lengths,
                // counts and offsets are u64/u32).
                let width = [1usize, 2, 4, 8][rng.random_range(0..4)];
                let i = rng.random_range(0..=len - width);
                let mut x = INTERESTING[rng.random_range(0..INTERESTING.len())];
                if rng.random_bool(0.3) {
                    x = x.wrapping_add(rng.random_range(0..4)).wrapping_sub(2);
                }
                v[i..i + width].copy_from_slice(&x.to_le_bytes()[..width]);
            }
            4 => {
                let i = if len == 0 {
                    0
                } else {
                    rng.random_range(0..=len)
                };
                let n = rng.random_range(1..=16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                v.splice(i..i, bytes);
            }
            5 if len > 0 => {
                let i = at(rng);
                let n = rng.random_range(1..=(len - i).min(64));
                v.drain(i..i + n);
            }
            6 if len > 0 => {
                // Duplicate a chunk (repeated records, keys, array items).
                let i = at(rng);
                let n = rng.random_range(1..=(len - i).min(128));
                let chunk = v[i..i + n].to_vec();
                let j = rng.random_range(0..=v.len());
                v.splice(j..j, chunk);
            }
            7 if len > 0 => {
                v.truncate(at(rng));
            }
            8 if !dict.is_empty() => {
                let token = dict[rng.random_range(0..dict.len())].as_bytes();
                let i = if len == 0 {
                    0
                } else {
                    rng.random_range(0..=len)
                };
                if rng.random_bool(0.5) || len == 0 {
                    v.splice(i..i, token.iter().copied());
                } else {
                    let end = (i + token.len()).min(len);
                    v.splice(i..end, token.iter().copied());
                }
            }
            9 if !other.is_empty() && len > 0 => {
                // Splice: our head, the other seed's tail.
                let i = at(rng);
                let j = rng.random_range(0..other.len());
                v.truncate(i);
                v.extend_from_slice(&other[j..]);
            }
            _ => {
                let i = if len == 0 {
                    0
                } else {
                    rng.random_range(0..=len)
                };
                v.insert(i, rng.random());
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_execution_is_made_again_from_its_number() {
        let base = b"GGUF\x03\x00\x00\x00some header bytes";
        let a = mutate(base, b"other", &["{"], &mut rng_for(7, "gguf", 123));
        let b = mutate(base, b"other", &["{"], &mut rng_for(7, "gguf", 123));
        let c = mutate(base, b"other", &["{"], &mut rng_for(7, "gguf", 124));
        assert_eq!(a, b);
        assert_ne!(a, c);
        // Empty seeds are mutated too, never a panic.
        for i in 0..1000 {
            mutate(b"", b"", &[], &mut rng_for(0, "x", i));
        }
    }
}
