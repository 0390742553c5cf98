//! One diagnostic type for every user error: a title, labelled source spans, notes and a
//! hint, rendered by ariadne (without colour, so that rendered errors snapshot-test).

use std::fmt::Write;

use ariadne::{Config, IndexType, Label as AriadneLabel, Report, ReportKind};

use crate::ast::Span;
use crate::source::SourceMap;

#[derive(Clone, Debug, PartialEq)]
pub struct Label {
    pub span: Span,
    pub message: String,
}

/// A user error. The first label is the primary location.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    pub title: String,
    pub labels: Vec<Label>,
    pub notes: Vec<String>,
    pub hint: Option<String>,
}

pub type Result<T> = std::result::Result<T, Box<Diagnostic>>;

impl Diagnostic {
    pub fn new(title: impl Into<String>) -> Self {
        Diagnostic {
            title: title.into(),
            labels: Vec::new(),
            notes: Vec::new(),
            hint: None,
        }
    }

    pub fn label(mut self, span: Span, message: impl Into<String>) -> Self {
        self.labels.push(Label {
            span,
            message: message.into(),
        });
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Boxes it as the error of a [`Result`].
    pub fn err<T>(self) -> Result<T> {
        Err(Box::new(self))
    }

    /// Renders the diagnostic as plain text, with source excerpts for every label.
    pub fn render(&self, sources: &SourceMap) -> String {
        let Some(primary) = self.labels.first() else {
            let mut out = format!("Error: {}\n", self.title);
            for note in &self.notes {
                let _ = writeln!(out, "    Note: {note}");
            }
            if let Some(hint) = &self.hint {
                let _ = writeln!(out, "    Help: {hint}");
            }
            return out;
        };
        let id = |span: &Span| sources.file(span.file).name.to_string();
        let range = |span: &Span| span.start as usize..span.end as usize;
        let config = Config::default()
            .with_color(false)
            .with_index_type(IndexType::Byte);
        let mut report =
            Report::build(ReportKind::Error, (id(&primary.span), range(&primary.span)))
                .with_config(config)
                .with_message(&self.title);
        for (order, label) in self.labels.iter().enumerate() {
            report = report.with_label(
                AriadneLabel::new((id(&label.span), range(&label.span)))
                    .with_message(&label.message)
                    .with_order(order as i32),
            );
        }
        for note in &self.notes {
            report = report.with_note(note);
        }
        if let Some(hint) = &self.hint {
            report = report.with_help(hint);
        }
        let cache = ariadne::sources(
            sources
                .files()
                .map(|(_, f)| (f.name.to_string(), f.text.clone())),
        );
        let mut buf = Vec::new();
        if report.finish().write(cache, &mut buf).is_err() {
            return format!("Error: {}\n", self.title);
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}
