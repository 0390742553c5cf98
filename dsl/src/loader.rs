//! Loads a program: the main file and everything it imports, transitively.
//!
//! Invariants: each file is parsed once (diamond imports are fine); an import that would
//! re-enter a file still being loaded is a cycle and is reported with the whole chain;
//! modules are listed dependencies first, so definitions are registered in a stable order.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use crate::ast::{ImportTarget, Item, Module, Span};
use crate::diagnostic::{Diagnostic, Result};
use crate::parser::parse_module;
use crate::source::{FileId, SourceMap};
use crate::stdlib;

/// Every module of a program and the sources they came from.
#[derive(Debug)]
pub struct Program {
    pub sources: SourceMap,
    /// Dependencies first; the main module last.
    pub modules: Vec<Module>,
    pub main: FileId,
}

impl Program {
    pub fn main_module(&self) -> &Module {
        self.modules
            .iter()
            .find(|m| m.file == self.main)
            .expect("main module is loaded")
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    Std(String),
    File(PathBuf),
}

enum State {
    Loading,
    Done,
}

struct Loader {
    sources: SourceMap,
    modules: Vec<Module>,
    state: HashMap<Key, State>,
    /// The chain of imports being followed: (file, the import statement's span in the importer).
    stack: Vec<(Key, String, Option<Span>)>,
}

/// Reads and loads the program whose main file is `path`.
///
/// On failure the source map is returned too, so that the diagnostic can be rendered.
pub fn load_file(path: &Path) -> std::result::Result<Program, (Box<Diagnostic>, SourceMap)> {
    let name = path.display().to_string();
    match std::fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => load_source(&name, text, Some(path)),
            Err(_) => Err((
                Box::new(
                    Diagnostic::new(format!("`{name}` is not valid UTF-8 text")).hint(
                        "rfnc reads .rfn programs as UTF-8; check that this is the right file",
                    ),
                ),
                SourceMap::new(),
            )),
        },
        Err(e) => Err((
            Box::new(Diagnostic::new(format!("cannot read `{name}`: {e}"))),
            SourceMap::new(),
        )),
    }
}

/// Loads a program from text (`path` resolves relative imports; `None` allows only `std`).
pub fn load_source(
    name: &str,
    text: String,
    path: Option<&Path>,
) -> std::result::Result<Program, (Box<Diagnostic>, SourceMap)> {
    let mut loader = Loader {
        sources: SourceMap::new(),
        modules: Vec::new(),
        state: HashMap::new(),
        stack: Vec::new(),
    };
    let key = match path {
        Some(p) => Key::File(p.canonicalize().unwrap_or_else(|_| p.to_path_buf())),
        None => Key::File(PathBuf::from(name)),
    };
    match loader.load(
        key,
        name.to_string(),
        text,
        path.map(Path::to_path_buf),
        None,
    ) {
        Ok(main) => Ok(Program {
            sources: loader.sources,
            modules: loader.modules,
            main,
        }),
        Err(d) => Err((d, loader.sources)),
    }
}

/// Joins a relative import to the importer's directory, removing `.` and `a/..` pairs.
fn join_normalised(base: &Path, rel: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for c in base.join(rel).components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

impl Loader {
    fn load(
        &mut self,
        key: Key,
        name: String,
        text: String,
        path: Option<PathBuf>,
        via: Option<Span>,
    ) -> Result<FileId> {
        let file = self.sources.add(name.clone(), text);
        self.state.insert(key.clone(), State::Loading);
        self.stack.push((key.clone(), name, via));
        let module = parse_module(file, &self.sources.file(file).text.clone())?;
        for item in &module.items {
            let Item::Import(import) = item else { continue };
            let (dep_key, dep_name, dep_text, dep_path) = match &import.target {
                ImportTarget::Std(module_name) => {
                    let known = stdlib::module_names()
                        .map(|m| format!("std.{m}"))
                        .collect::<Vec<_>>();
                    let text = module_name.strip_prefix("std.").and_then(stdlib::source);
                    let Some(text) = text else {
                        let mut d =
                            Diagnostic::new(format!("there is no standard module `{module_name}`"))
                                .label(import.span, "unknown module")
                                .note(format!("the standard library has: {}", known.join(", ")));
                        let guess = if module_name.starts_with("std.") {
                            module_name.clone()
                        } else {
                            format!("std.{module_name}")
                        };
                        if known.contains(&guess) {
                            d = d.hint(format!(
                                "standard modules are imported as `import {guess};`"
                            ));
                        } else if let Some(s) =
                            crate::suggest::did_you_mean(&guess, known.iter().map(String::as_str))
                        {
                            d = d.hint(format!("did you mean `{s}`?"));
                        }
                        d = d.note(
                            "files are imported by path, in quotes: `import \"blocks.rfn\";`",
                        );
                        return d.err();
                    };
                    let short = module_name.trim_start_matches("std.").to_string();
                    (
                        Key::Std(short.clone()),
                        format!("std/{short}.rfn"),
                        text.to_string(),
                        None,
                    )
                }
                ImportTarget::Path(rel) => {
                    let Some(base) = path
                        .as_ref()
                        .map(|p| p.parent().unwrap_or(Path::new("")).to_path_buf())
                    else {
                        return Diagnostic::new(format!(
                            "cannot import `{rel}` from a program that is not a file"
                        ))
                        .label(import.span, "file imports need a file to be relative to")
                        .err();
                    };
                    let dep = join_normalised(&base, rel);
                    let text = match std::fs::read_to_string(&dep) {
                        Ok(t) => t,
                        Err(e) => {
                            return Diagnostic::new(format!("cannot import `{rel}`"))
                                .label(import.span, format!("cannot read `{}`: {e}", dep.display()))
                                .hint("file imports are relative to the importing file; the standard library is imported as `import std.NAME;`")
                                .err()
                        }
                    };
                    let key = Key::File(dep.canonicalize().unwrap_or_else(|_| dep.clone()));
                    (key, dep.display().to_string(), text, Some(dep))
                }
            };
            match self.state.get(&dep_key) {
                Some(State::Done) => continue,
                Some(State::Loading) => return self.cycle_error(&dep_key, import.span),
                None => {
                    self.load(dep_key, dep_name, dep_text, dep_path, Some(import.span))?;
                }
            }
        }
        self.stack.pop();
        self.state.insert(key, State::Done);
        self.modules.push(module);
        Ok(file)
    }

    fn cycle_error(&self, key: &Key, closing: Span) -> Result<FileId> {
        let start = self
            .stack
            .iter()
            .position(|(k, _, _)| k == key)
            .unwrap_or(0);
        let chain: Vec<&str> = self.stack[start..]
            .iter()
            .map(|(_, n, _)| n.as_str())
            .collect();
        let mut d = Diagnostic::new(format!(
            "cyclic import: {} -> {}",
            chain.join(" -> "),
            chain[0]
        ))
        .label(
            closing,
            format!("imports `{}`, which is still being loaded", chain[0]),
        );
        for (_, name, via) in self.stack[start + 1..].iter().rev() {
            if let Some(span) = via {
                d = d.label(*span, format!("imports `{name}`"));
            }
        }
        d.hint("move the shared blocks into a file that both can import")
            .err()
    }
}
