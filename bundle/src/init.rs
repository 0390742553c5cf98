//! Parameter initialisation rules and their sampler.
//!
//! The compiler decides each parameter's rule from the graph (it alone knows which conv
//! feeds a batch norm) and records it in the bundle; [`sample`] turns a rule into values.
//! Each value depends only on the seed, the tensor's name and the element's index, not on
//! the order tensors are visited, so a bundle's random weights equal `rfnc weights`' file.

use serde::{Deserialize, Serialize};

use crate::rng::{name_hash, splitmix64};

/// How a parameter starts.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "rule")]
pub enum Init {
    /// All zeros (biases, batch-norm mean and beta, momentum).
    Zeros,
    /// All ones (batch-norm variance and gamma).
    Ones,
    /// Normal with mean 0 and this standard deviation (conv weights).
    Normal { std: f32 },
}

/// Standard normal samples by Box-Muller from the counter stream `(seed, name, index)`.
pub fn standard_normal(seed: u64, name: &str, index: u64) -> f32 {
    let key = splitmix64(seed ^ name_hash(name)).wrapping_add(index.wrapping_mul(2));
    let u1 = ((splitmix64(key) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let u2 = ((splitmix64(key.wrapping_add(1)) >> 11) as f64) / (1u64 << 53) as f64;
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// The `elements` values of tensor `name` under `rule` and `seed`.
pub fn sample(rule: Init, seed: u64, name: &str, elements: u64) -> Vec<f32> {
    match rule {
        Init::Zeros => vec![0.0; elements as usize],
        Init::Ones => vec![1.0; elements as usize],
        Init::Normal { std } => (0..elements)
            .map(|i| std * standard_normal(seed, name, i))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_depend_on_seed_and_name_only_and_have_the_rule_spread() {
        let a = sample(Init::Normal { std: 0.5 }, 3, "w", 20_000);
        assert_eq!(a, sample(Init::Normal { std: 0.5 }, 3, "w", 20_000));
        assert_ne!(a, sample(Init::Normal { std: 0.5 }, 4, "w", 20_000));
        assert_ne!(a, sample(Init::Normal { std: 0.5 }, 3, "v", 20_000));
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(
            mean.abs() < 0.02 && (var.sqrt() - 0.5).abs() < 0.02,
            "{mean} {var}"
        );
        assert_eq!(sample(Init::Ones, 0, "g", 3), vec![1.0; 3]);
        assert_eq!(sample(Init::Zeros, 0, "b", 2), vec![0.0; 2]);
    }

    #[test]
    fn rules_serialise_as_tagged_objects() {
        let text = serde_json::to_string(&Init::Normal { std: 0.25 }).unwrap();
        assert_eq!(text, r#"{"rule":"normal","std":0.25}"#);
        assert_eq!(
            serde_json::from_str::<Init>(r#"{"rule":"ones"}"#).unwrap(),
            Init::Ones
        );
    }
}
