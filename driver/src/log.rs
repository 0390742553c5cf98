//! Stage timings: with `--timings` each stage's time goes to standard error as it ends
//! (`timing: STAGE  12.345 ms`), so a long compile shows where it is.

use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, Default)]
pub struct Log {
    /// Print each stage's time on standard error.
    pub timings: bool,
}

impl Log {
    pub fn new(timings: bool) -> Self {
        Log { timings }
    }

    /// Records that `stage` ran from `start` until now.
    pub fn since(&self, stage: &str, start: Instant) {
        self.time(stage, start.elapsed());
    }

    pub fn time(&self, stage: &str, time: Duration) {
        if self.timings {
            eprintln!("timing: {stage:<24} {:>9.3} ms", time.as_secs_f64() * 1e3);
        }
    }

    /// A note for the user on standard error (always shown).
    pub fn note(&self, text: &str) {
        eprintln!("{text}");
    }
}
