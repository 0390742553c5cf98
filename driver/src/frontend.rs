//! The front end: a `.rfn` file loaded (imports resolved), elaborated with `--input` and
//! `-D` settings and verified into the forward graph, together with the program's training
//! settings; the training step built from it with the command line's overrides merged in.
//!
//! Invariant: every graph handed on has passed the verifier (a failure is a compiler bug).

use std::path::PathBuf;
use std::time::Instant;

use rfnc_compiler::ir::train_config::TrainConfig;
use rfnc_compiler::ir::{verify, Graph};
use rfnc_compiler::passes::train::train_step;
use rfnc_dsl::{elaborate_with_training, load_file, Diagnostic, Options, Program};

use crate::error::{Error, Result};
use crate::log::Log;

/// The default of `--input`.
pub const DEFAULT_INPUT: &str = "1x3x512x512";

/// Which program, at which sizes and settings.
#[derive(Clone, Debug)]
pub struct Source {
    pub file: PathBuf,
    /// `NxCxHxW` of the first input.
    pub input: String,
    /// `NAME=VALUE` overrides of the program's `config` values.
    pub defines: Vec<String>,
}

impl Source {
    pub fn new(file: impl Into<PathBuf>) -> Self {
        Source {
            file: file.into(),
            input: DEFAULT_INPUT.to_string(),
            defines: Vec::new(),
        }
    }

    /// The elaboration options, checked.
    pub fn options(&self) -> Result<Options> {
        let input = parse_input(&self.input)?;
        let mut defines = Vec::new();
        for d in &self.defines {
            match d.split_once('=') {
                Some((name, value)) if !name.trim().is_empty() => {
                    defines.push((name.trim().to_string(), value.trim().to_string()))
                }
                _ => {
                    return Err(Diagnostic::new(format!("-D {d}: expected NAME=VALUE"))
                        .hint("for example -D depth=152 or -D crp_order=conv_pool")
                        .into())
                }
            }
        }
        Ok(Options { input, defines })
    }

    /// Parses the file and its imports.
    pub fn load(&self, log: &Log) -> Result<Program> {
        let start = Instant::now();
        let program = load_file(&self.file).map_err(|(d, sources)| Error::User(d, sources));
        log.since("load (parse + imports)", start);
        program
    }

    /// The file's name, for messages and the bundle.
    pub fn name(&self) -> String {
        self.file.file_name().map_or_else(
            || self.file.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    }
}

/// Parses `NxCxHxW` (any number of positive sizes separated by `x`).
pub fn parse_input(text: &str) -> Result<Vec<u64>> {
    let bad = |why: String| {
        Error::user(
            Diagnostic::new(format!("--input {text}: {why}"))
                .hint("give the first input's sizes separated by `x`, e.g. --input 1x3x512x512"),
        )
    };
    let mut dims = Vec::new();
    for part in text.split(['x', 'X']) {
        match part.trim().parse::<u64>() {
            Ok(0) => return Err(bad("sizes must be at least 1".into())),
            Ok(v) if v > (1 << 31) => return Err(bad(format!("{v} is too large"))),
            Ok(v) => dims.push(v),
            Err(_) => return Err(bad(format!("`{part}` is not a size"))),
        }
    }
    Ok(dims)
}

/// The training step's settings from the command line: each given value overrides the
/// network's `sgd(...)`; patterns add to its `lr_scale`/`freeze`.
#[derive(Clone, Debug, Default)]
pub struct TrainSettings {
    pub lr: Option<f64>,
    pub momentum: Option<f64>,
    pub weight_decay: Option<f64>,
    /// `PATTERN=FACTOR`.
    pub lr_scale: Vec<String>,
    pub freeze: Vec<String>,
    /// Seed of the dropout masks.
    pub seed: u64,
}

impl TrainSettings {
    /// Whether any setting was given (a compiled bundle cannot take them).
    pub fn given(&self) -> Option<&'static str> {
        [
            (self.lr.is_some(), "--lr"),
            (self.momentum.is_some(), "--momentum"),
            (self.weight_decay.is_some(), "--weight-decay"),
            (!self.lr_scale.is_empty(), "--lr-scale"),
            (!self.freeze.is_empty(), "--freeze"),
            (self.seed != 0, "--seed"),
        ]
        .into_iter()
        .find_map(|(given, flag)| given.then_some(flag))
    }

    /// The program's settings with these merged over them.
    pub fn merge(&self, mut config: TrainConfig) -> Result<TrainConfig> {
        config.lr = self.lr.unwrap_or(config.lr);
        config.momentum = self.momentum.unwrap_or(config.momentum);
        config.weight_decay = self.weight_decay.unwrap_or(config.weight_decay);
        config.seed = self.seed;
        for entry in &self.lr_scale {
            let parsed = entry
                .rsplit_once('=')
                .and_then(|(p, f)| Some((p.trim().to_string(), f.trim().parse::<f64>().ok()?)));
            match parsed {
                Some((pattern, factor)) if !pattern.is_empty() => {
                    config.lr_scales.push((pattern, factor))
                }
                _ => {
                    return Err(Diagnostic::new(format!(
                        "--lr-scale {entry}: expected PATTERN=FACTOR"
                    ))
                    .hint("for example --lr-scale backbone=0.1")
                    .into())
                }
            }
        }
        config.frozen.extend(self.freeze.iter().cloned());
        Ok(config)
    }
}

/// A program elaborated once: its verified forward graph and its own training settings.
#[derive(Clone, Debug)]
pub struct Network {
    pub source: Source,
    pub forward: Graph,
    pub training: TrainConfig,
}

impl Network {
    /// Loads, elaborates and verifies the program.
    pub fn elaborate(source: &Source, log: &Log) -> Result<Network> {
        let options = source.options()?;
        let program = source.load(log)?;
        let start = Instant::now();
        let (graph, training) = elaborate_with_training(&program, &options)
            .map_err(|d| Error::User(d, program.sources))?;
        log.since("elaborate + shapes", start);
        let forward = verified(log, graph, "elaborated")?;
        Ok(Network {
            source: source.clone(),
            forward,
            training,
        })
    }

    /// The training-step graph: the network's settings with `settings` merged over them.
    pub fn train_step(&self, settings: &TrainSettings, log: &Log) -> Result<Graph> {
        self.check_patterns(settings)?;
        let config = settings.merge(self.training.clone())?;
        let start = Instant::now();
        let step = train_step(&self.forward, &config).map_err(|e| Error::message(e.0))?;
        log.since("autodiff + training step", start);
        verified(log, step, "training-step")
    }
}

impl Network {
    /// Every `--freeze` and `--lr-scale` pattern must match a trainable parameter (as the
    /// program's own must): a typo is an error with the nearest scope, not a different run.
    fn check_patterns(&self, settings: &TrainSettings) -> Result<()> {
        let names: Vec<&str> = self
            .forward
            .node_ids()
            .filter_map(|id| match &self.forward.node(id).op {
                rfnc_compiler::ir::Op::Param { name, kind } if kind.is_trainable() => {
                    Some(name.as_str())
                }
                _ => None,
            })
            .collect();
        let scales = settings.lr_scale.iter().map(|e| {
            (
                "--lr-scale",
                e.rsplit_once('=').map_or(e.as_str(), |(p, _)| p.trim()),
            )
        });
        let frozen = settings.freeze.iter().map(|p| ("--freeze", p.as_str()));
        for (flag, pattern) in frozen.chain(scales) {
            if names
                .iter()
                .any(|n| rfnc_compiler::ir::train_config::pattern_matches(pattern, n))
            {
                continue;
            }
            let mut scopes: Vec<&str> = names
                .iter()
                .map(|n| n.split('.').next().unwrap_or(n))
                .collect();
            scopes.dedup();
            let mut d = Diagnostic::new(format!("{flag} {pattern}: the pattern matches no trainable parameter"))
                .note("a pattern names a scope (`backbone` covers `backbone.conv1.weight`) or uses `*` (`*.bias`)");
            if let Some(s) = rfnc_dsl::did_you_mean(pattern, scopes.iter().copied()) {
                d = d.hint(format!("did you mean \"{s}\"?"));
            }
            return Err(d.into());
        }
        Ok(())
    }
}

/// Runs the verifier; a failure is a compiler bug.
pub fn verified(log: &Log, graph: Graph, stage: &str) -> Result<Graph> {
    let start = Instant::now();
    let errors = verify(&graph);
    log.since(&format!("verify ({stage})"), start);
    match errors.first() {
        None => Ok(graph),
        Some(first) => Err(Error::internal(format!(
            "the {stage} graph fails verification ({} problems); first: {} at {}",
            errors.len(),
            first.message,
            first.loc
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_input;

    #[test]
    fn input_shapes_parse_and_reject_bad_sizes() {
        assert_eq!(parse_input("1x3x64x64").unwrap(), vec![1, 3, 64, 64]);
        assert!(parse_input("1x3x0x64").is_err());
        assert!(parse_input("1x3xx64").is_err());
        assert!(parse_input("abc").is_err());
    }
}
