//! Deterministic randomness: SplitMix64 streams keyed by coordinates (seed, epoch,
//! position, ...), the epoch permutation, and uniform draws. Nothing depends on time or
//! threads, so every batch is a pure function of the seed and its place in the data order.

/// SplitMix64's finaliser: a bijective 64-bit mix with good avalanche.
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One 64-bit key from several coordinates, order-sensitive: `key(&[a, b]) != key(&[b, a])`
/// in general.
pub fn key(parts: &[u64]) -> u64 {
    parts
        .iter()
        .fold(0x6A09_E667_F3BC_C908, |h, &p| splitmix64(h ^ splitmix64(p)))
}

/// Stream tags, so that the permutation and the augmentation of the same (seed, epoch)
/// never share a stream.
pub(crate) const TAG_PERMUTATION: u64 = 0x7065_726D; // "perm"
pub(crate) const TAG_AUGMENT: u64 = 0x6175_676D; // "augm"

/// A SplitMix64 stream.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(key: u64) -> Rng {
        Rng { state: key }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        splitmix64(self.state)
    }

    /// Uniform in [0, 1) with 53 bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi]; `lo` when the range is empty.
    pub fn range_f64(&mut self, lo: f64, hi: f64) -> f64 {
        if hi <= lo {
            return lo;
        }
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform integer in [0, n); 0 when `n` is 0 (multiply-shift, bias below 2^-32 for
    /// the sizes used here).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform integer in [lo, hi] (inclusive); `lo` when `hi < lo`.
    pub fn between(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            return lo;
        }
        lo + self.below((hi - lo) as u64 + 1) as i64
    }

    pub fn coin(&mut self) -> bool {
        self.next_u64() >> 63 == 1
    }
}

/// The order of epoch `epoch` of a dataset of `len` samples under `seed`: a Fisher-Yates
/// shuffle of `0..len` driven by the stream `key(seed, TAG_PERMUTATION, epoch)`.
pub fn epoch_permutation(seed: u64, epoch: u64, len: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    let mut rng = Rng::new(key(&[seed, TAG_PERMUTATION, epoch]));
    for i in (1..len).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_a_permutation_and_depends_on_seed_and_epoch() {
        let p = epoch_permutation(1, 0, 100);
        let mut sorted = p.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(p, epoch_permutation(1, 1, 100));
        assert_ne!(p, epoch_permutation(2, 0, 100));
        assert_eq!(p, epoch_permutation(1, 0, 100));
    }

    #[test]
    fn draws_stay_in_range() {
        let mut rng = Rng::new(7);
        for _ in 0..1000 {
            let u = rng.uniform();
            assert!((0.0..1.0).contains(&u));
            assert!(rng.below(5) < 5);
            assert!((-2..=3).contains(&rng.between(-2, 3)));
        }
        assert_eq!(rng.below(0), 0);
    }
}
