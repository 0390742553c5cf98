//! The driver's error: a user's problem, reported as a diagnostic with the sources it
//! points into (exit status 1), or an internal compiler error, a bug (exit status 70).

use rfnc_dsl::{Diagnostic, SourceMap};

#[derive(Debug)]
pub enum Error {
    User(Box<Diagnostic>, SourceMap),
    Internal(String),
}

impl Error {
    /// A user error without source locations.
    pub fn user(d: Diagnostic) -> Self {
        Error::User(Box::new(d), SourceMap::new())
    }

    /// A user error that is one message.
    pub fn message(text: impl Into<String>) -> Self {
        Error::user(Diagnostic::new(text.into()))
    }

    pub fn internal(text: impl Into<String>) -> Self {
        Error::Internal(text.into())
    }

    /// The same error under another title (user errors only).
    pub fn with_title(self, title: String) -> Self {
        match self {
            Error::User(mut d, s) => {
                d.title = title;
                Error::User(d, s)
            }
            other => other,
        }
    }
}

impl From<Diagnostic> for Error {
    fn from(d: Diagnostic) -> Self {
        Error::user(d)
    }
}

pub type Result<T> = std::result::Result<T, Error>;
