//! Progress over a count of images (`rfnc eval`, `rfnc predict`): a bar on a terminal,
//! otherwise a plain line about every 10% of the images; notes go to standard error.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use rfnc_driver::eval::Progress;

pub struct ImageProgress {
    bar: Option<ProgressBar>,
    what: &'static str,
    last: usize,
}

impl ImageProgress {
    /// `what` names the work, e.g. `evaluating`.
    pub fn new(what: &'static str) -> Self {
        ImageProgress {
            bar: None,
            what,
            last: 0,
        }
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Progress for ImageProgress {
    fn note(&mut self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn image(&mut self, done: usize, total: usize) {
        if self.bar.is_none() && std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total as u64);
            let style = ProgressStyle::with_template(&format!(
                "{} {{bar:30}} {{pos}}/{{len}} images [{{elapsed_precise}}, ETA {{eta_precise}}]",
                self.what
            ))
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            self.bar = Some(bar);
        }
        match &self.bar {
            Some(bar) => bar.set_position(done as u64),
            None if done == total || done - self.last >= (total / 10).max(1) => {
                eprintln!("{} {done}/{total} images", self.what);
                self.last = done;
            }
            None => {}
        }
    }
}
