//! Variables of one block call (or of the network body): nested lexical scopes.

use std::collections::HashMap;

use super::Value;
use crate::ast::Span;

pub(crate) struct Env {
    block: Option<String>,
    scopes: Vec<HashMap<String, (Value, Span)>>,
}

impl Env {
    /// A fresh environment: `context` says where it is ("block `rcu`", "config `depth`"),
    /// `None` for the network body.
    pub fn new(block: Option<String>) -> Self {
        Env {
            block,
            scopes: vec![HashMap::new()],
        }
    }

    pub fn block_name(&self) -> Option<&str> {
        self.block.as_deref()
    }

    pub fn push(&mut self) {
        self.scopes.push(HashMap::new());
    }

    pub fn pop(&mut self) {
        self.scopes.pop();
    }

    pub fn define(&mut self, name: &str, value: Value, span: Span) {
        self.scopes
            .last_mut()
            .expect("at least one scope")
            .insert(name.to_string(), (value, span));
    }

    /// Where `name` was defined, if in the innermost scope.
    pub fn declared_here(&self, name: &str) -> Option<Span> {
        self.scopes
            .last()
            .and_then(|s| s.get(name))
            .map(|(_, span)| *span)
    }

    pub fn get(&self, name: &str) -> Option<Value> {
        self.scopes
            .iter()
            .rev()
            .find_map(|s| s.get(name))
            .map(|(v, _)| v.clone())
    }

    /// Assigns to the innermost existing variable; false if there is none.
    pub fn assign(&mut self, name: &str, value: Value) -> bool {
        for scope in self.scopes.iter_mut().rev() {
            if let Some(slot) = scope.get_mut(name) {
                slot.0 = value;
                return true;
            }
        }
        false
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.scopes
            .iter()
            .flat_map(|s| s.keys().map(String::as_str))
    }
}
