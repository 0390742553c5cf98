//! Counter-based random numbers: every value is a pure function of its coordinates, so the
//! same mask comes out in the forward and the backward pass, on any device, in any order.

pub use rfnc_bundle::rng::splitmix64;

/// Combines a key with one more coordinate.
pub fn mix(key: u64, coordinate: u64) -> u64 {
    splitmix64(key ^ splitmix64(coordinate))
}

/// A uniform number in [0, 1) with 24 random bits (exact in f32) for element `index` of
/// dropout stream `stream` at training step `step` under `seed`.
pub fn dropout_uniform(seed: u64, step: u64, stream: u64, index: u64) -> f64 {
    let h = mix(mix(mix(splitmix64(seed), step), stream), index);
    (h >> 40) as f64 / (1u64 << 24) as f64
}

/// Whether dropout with drop probability `rate` keeps the element.
pub fn dropout_keep(rate: f64, seed: u64, step: u64, stream: u64, index: u64) -> bool {
    dropout_uniform(seed, step, stream, index) >= rate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_rate_matches_and_masks_differ_by_step_and_stream() {
        let n = 100_000u64;
        let kept = (0..n).filter(|&i| dropout_keep(0.5, 7, 3, 1, i)).count() as f64 / n as f64;
        assert!((kept - 0.5).abs() < 0.01, "{kept}");
        let mask = |step, stream| {
            (0..256)
                .map(|i| dropout_keep(0.5, 7, step, stream, i))
                .collect::<Vec<_>>()
        };
        assert_eq!(mask(3, 1), mask(3, 1));
        assert_ne!(mask(3, 1), mask(4, 1));
        assert_ne!(mask(3, 1), mask(3, 2));
        assert!((0..1000).all(|i| dropout_keep(0.0, 1, 1, 1, i)));
    }
}
