//! A lexical pre-scan run before the grammar: it finds the errors a PEG parser reports
//! badly and says them plainly: unterminated strings, single-quoted strings, characters
//! that cannot appear in a program, unbalanced or mismatched brackets (pointing at the
//! bracket left open), and nesting deeper than the parser and elaborator can handle.
//!
//! Invariant: a text that passes the pre-scan has balanced `()[]{}` outside strings and
//! comments, nested at most [`MAX_NESTING`] deep, so parsing cannot overflow the stack.

use crate::ast::Span;
use crate::diagnostic::{Diagnostic, Result};
use crate::source::FileId;

/// Deepest bracket nesting a program may use.
pub const MAX_NESTING: usize = 64;

fn span(file: FileId, at: usize, len: usize) -> Span {
    Span {
        file,
        start: at as u32,
        end: (at + len) as u32,
    }
}

/// Longest run of prefix operators (`-`, `not`) allowed in a row.
pub const MAX_PREFIX_RUN: usize = 32;

pub fn prescan(file: FileId, text: &str) -> Result<()> {
    let mut open: Vec<(char, usize)> = Vec::new();
    let mut prefix_run = 0usize;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let is_not = c == 'n'
            && text[i..].starts_with("not")
            && !text[i + 3..].starts_with(|ch: char| ch.is_ascii_alphanumeric() || ch == '_')
            && !text[..i].ends_with(|ch: char| ch.is_ascii_alphanumeric() || ch == '_');
        if c == '-' || is_not {
            prefix_run += 1;
            if prefix_run > MAX_PREFIX_RUN {
                return Diagnostic::new("too many prefix operators in a row")
                    .label(
                        span(file, i, if is_not { 3 } else { 1 }),
                        format!("more than {MAX_PREFIX_RUN} `-` or `not` in a row"),
                    )
                    .err();
            }
        } else if !c.is_whitespace() {
            prefix_run = 0;
        }
        match c {
            '/' if chars.peek().map(|(_, n)| *n) == Some('/') => {
                for (_, n) in chars.by_ref() {
                    if n == '\n' {
                        break;
                    }
                }
            }
            '"' => {
                let mut closed = false;
                while let Some((_, n)) = chars.next() {
                    match n {
                        '\\' => {
                            chars.next();
                        }
                        '"' => {
                            closed = true;
                            break;
                        }
                        '\n' => break,
                        _ => {}
                    }
                }
                if !closed {
                    return Diagnostic::new("unterminated string")
                        .label(span(file, i, 1), "this string is not closed on its line")
                        .hint("close it with `\"`")
                        .err();
                }
            }
            '\'' => {
                let rest = &text[i + 1..];
                let inner = rest.split(['\'', '\n']).next().unwrap_or("");
                let hint = if rest[inner.len()..].starts_with('\'') {
                    format!("write \"{inner}\", not '{inner}'")
                } else {
                    "strings are written in double quotes, like \"pool_conv\"".to_string()
                };
                return Diagnostic::new("strings use double quotes")
                    .label(span(file, i, 1), "`'` is not a quote in .rfn")
                    .hint(hint)
                    .err();
            }
            '(' | '[' | '{' => {
                open.push((c, i));
                if open.len() > MAX_NESTING {
                    return Diagnostic::new("brackets are nested too deeply")
                        .label(span(file, i, 1), format!("more than {MAX_NESTING} levels"))
                        .hint("split the expression with `let`")
                        .err();
                }
            }
            ')' | ']' | '}' => {
                let want = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                match open.pop() {
                    Some((o, _)) if o == want => {}
                    // An extra closer inside a block: nothing of its kind is open.
                    Some((o, _)) if o == '{' && !open.iter().any(|(p, _)| *p == want) => {
                        return Diagnostic::new(format!("unmatched `{c}`"))
                            .label(
                                span(file, i, 1),
                                format!("no `{want}` is open here: remove this `{c}`?"),
                            )
                            .err()
                    }
                    Some((o, at)) => {
                        let close = match o {
                            '(' => ')',
                            '[' => ']',
                            _ => '}',
                        };
                        return Diagnostic::new(format!("`{c}` does not close `{o}`"))
                            .label(span(file, i, 1), format!("expected `{close}` before this"))
                            .label(span(file, at, 1), format!("`{o}` opened here"))
                            .err();
                    }
                    None => {
                        return Diagnostic::new(format!("unmatched `{c}`"))
                            .label(span(file, i, 1), "nothing to close here")
                            .err()
                    }
                }
            }
            c if !c.is_ascii() && !c.is_whitespace() => {
                let mut d = Diagnostic::new(format!("unexpected character `{c}`")).label(
                    span(file, i, c.len_utf8()),
                    "not allowed outside strings and comments",
                );
                if c.is_alphanumeric() {
                    d = d.hint("names use ASCII letters, digits and `_`");
                }
                return d.err();
            }
            _ => {}
        }
    }
    if let Some((o, at)) = open.last() {
        let close = match o {
            '(' => ')',
            '[' => ']',
            _ => '}',
        };
        return Diagnostic::new(format!("`{o}` is never closed"))
            .label(
                span(file, *at, 1),
                format!("opened here; expected `{close}` before the end of the file"),
            )
            .err();
    }
    Ok(())
}
