//! Learning-rate schedules: the factor by which iteration `i` of `total` scales the compiled
//! learning rates (the training step's `lr_factor` input).

use std::fmt;
use std::str::FromStr;

/// How the learning rate changes over a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    /// `(1 - i / total) ^ power` (the "poly" schedule of DeepLab and the RefineNet ports;
    /// power 0.9 by default).
    Poly { power: f64 },
    /// `gamma ^ floor(i / every)`.
    Step { every: u64, gamma: f64 },
    /// Always 1.
    Const,
}

impl Schedule {
    /// The factor for iteration `i` (0-based) of a run of `total` iterations.
    pub fn factor(&self, i: u64, total: u64) -> f64 {
        match *self {
            Schedule::Poly { power } => {
                let done = i as f64 / total.max(1) as f64;
                (1.0 - done).max(0.0).powf(power)
            }
            Schedule::Step { every, gamma } => gamma.powf((i / every.max(1)) as f64),
            Schedule::Const => 1.0,
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Poly { power } => write!(f, "poly:{power}"),
            Schedule::Step { every, gamma } => write!(f, "step:{every}:{gamma}"),
            Schedule::Const => write!(f, "const"),
        }
    }
}

/// `poly`, `poly:POWER`, `step:EVERY`, `step:EVERY:GAMMA` (gamma 0.1 by default), `const`.
impl FromStr for Schedule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split(':').map(str::trim).collect();
        let number = |s: &str, what: &str| -> Result<f64, String> {
            match s.parse::<f64>() {
                Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
                _ => Err(format!("`{s}` is not a positive {what}")),
            }
        };
        match parts.as_slice() {
            ["poly"] => Ok(Schedule::Poly { power: 0.9 }),
            ["poly", power] => Ok(Schedule::Poly {
                power: number(power, "power")?,
            }),
            ["step", every, rest @ ..] if rest.len() <= 1 => {
                let every = every
                    .parse::<u64>()
                    .ok()
                    .filter(|&e| e > 0)
                    .ok_or_else(|| format!("`{every}` is not a positive number of iterations"))?;
                let gamma = match rest {
                    [g] => number(g, "factor")?,
                    _ => 0.1,
                };
                Ok(Schedule::Step { every, gamma })
            }
            ["const"] => Ok(Schedule::Const),
            _ => Err(format!(
                "`{text}` is not a schedule: use poly, poly:POWER, step:EVERY[:GAMMA] or const"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Schedule;

    #[test]
    fn factors_follow_the_formulas() {
        let poly: Schedule = "poly".parse().unwrap();
        assert_eq!(poly.factor(0, 100), 1.0);
        assert!((poly.factor(50, 100) - 0.5f64.powf(0.9)).abs() < 1e-15);
        assert_eq!(poly.factor(100, 100), 0.0);
        let step: Schedule = "step:10:0.5".parse().unwrap();
        assert_eq!(step.factor(9, 100), 1.0);
        assert_eq!(step.factor(10, 100), 0.5);
        assert_eq!(step.factor(25, 100), 0.25);
        assert_eq!("step:10".parse::<Schedule>().unwrap().factor(10, 0), 0.1);
        assert_eq!("const".parse::<Schedule>().unwrap().factor(7, 10), 1.0);
        assert_eq!(
            "poly:2".parse::<Schedule>().unwrap(),
            Schedule::Poly { power: 2.0 }
        );
        for bad in ["", "poly:-1", "step", "step:0", "step:5:x", "cosine"] {
            assert!(bad.parse::<Schedule>().is_err(), "{bad}");
        }
    }
}
