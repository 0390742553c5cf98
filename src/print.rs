//! What the binary prints: standard output that tolerates a closed pipe, files written
//! atomically, and errors rendered with their sources and exit status.

use std::path::Path;
use std::process::ExitCode;

use rfnc_bundle::atomic::write_atomically;
use rfnc_driver::Error;

/// The command's exit status, 1 with the diagnostic (a user error), or 70 (an internal
/// error).
pub fn report(result: Result<ExitCode, Error>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(Error::User(d, sources)) => {
            eprint!("{}", d.render(&sources));
            ExitCode::from(1)
        }
        Err(Error::Internal(message)) => {
            eprintln!("internal compiler error: {message}");
            eprintln!("This is a bug in rfnc; please report it with the program that caused it.");
            ExitCode::from(70)
        }
    }
}

/// Writes to standard output; a reader that stopped early (`| head`) is not an error.
pub fn print_stdout(text: &str) -> Result<(), Error> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Error::message(format!(
            "cannot write to standard output: {e}"
        ))),
    }
}

/// Text to standard output, or to `output` (atomically).
pub fn emit_text(text: &str, output: Option<&Path>) -> Result<(), Error> {
    match output {
        None => print_stdout(text),
        Some(path) => write_atomically(path, text.as_bytes())
            .map_err(|e| Error::message(format!("cannot write `{}`: {e}", path.display()))),
    }
}
