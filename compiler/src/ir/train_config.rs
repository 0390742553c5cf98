//! The settings of a training step as a program declares them (`sgd`, `lr_scale`,
//! `freeze`) and the parameter-name patterns they use: data the language produces and the
//! training-step pass consumes (`passes::train`).

/// Hyper-parameters of the SGD training step.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Seed of the dropout masks.
    pub seed: u64,
    /// `(pattern, factor)`: parameters matching `pattern` train at `lr * factor`; when
    /// several match, the last one listed wins (command-line entries come after the source's).
    pub lr_scales: Vec<(String, f64)>,
    /// Patterns of parameters that are not trained.
    pub frozen: Vec<String>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            lr: 5e-4,
            momentum: 0.9,
            weight_decay: 5e-4,
            seed: 0,
            lr_scales: Vec::new(),
            frozen: Vec::new(),
        }
    }
}

/// Whether parameter `name` matches `pattern`: `*` matches any run of characters; a
/// pattern without `*` matches the name itself and everything under it (`backbone` matches
/// `backbone.conv1.weight`).
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    if !pattern.contains('*') {
        return name == pattern
            || name
                .strip_prefix(pattern)
                .is_some_and(|rest| rest.starts_with('.'));
    }
    glob(pattern.as_bytes(), name.as_bytes())
}

/// Wildcard match with `*` in linear-times-pattern time (backtracks only to the last `*`).
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}
