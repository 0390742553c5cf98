//! Values of the elaborator: compile-time scalars and lists, and tensors (graph nodes).

use std::rc::Rc;

use rfnc_compiler::ir::{Graph, NodeId};

use crate::ast::BaseType;

#[derive(Clone, Debug)]
pub enum Value {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(Rc<str>),
    None,
    Tensor(NodeId),
    List(Rc<Vec<Value>>),
    Record(Rc<Vec<(String, Value)>>),
}

impl Value {
    /// How the value is named in error messages ("an int", "a tensor f32[1, 64, 8, 8]").
    pub fn describe(&self, graph: &Graph) -> String {
        match self {
            Value::Int(v) => format!("the int {v}"),
            Value::Float(v) => format!("the float {v}"),
            Value::Bool(v) => format!("the bool {v}"),
            Value::Str(s) => format!("the string \"{s}\""),
            Value::None => "none".to_string(),
            Value::Tensor(id) => format!("a tensor {}", graph.node(*id).ty.shape_string()),
            Value::List(items) => format!("a list of {} items", items.len()),
            Value::Record(fields) => {
                let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
                format!("a record {{{}}}", names.join(", "))
            }
        }
    }

    pub fn base_type(&self) -> Option<BaseType> {
        Some(match self {
            Value::Int(_) => BaseType::Int,
            Value::Float(_) => BaseType::Float,
            Value::Bool(_) => BaseType::Bool,
            Value::Str(_) => BaseType::Str,
            Value::None => return None,
            Value::Tensor(_) => BaseType::Tensor,
            Value::List(_) => BaseType::List,
            Value::Record(_) => BaseType::Record,
        })
    }

    /// Checks the value against a declared type; an int is accepted (and converted) where a
    /// float is declared.
    pub fn conform(self, base: BaseType, optional: bool) -> Option<Value> {
        match (self, base) {
            (Value::None, _) if optional => Some(Value::None),
            (Value::Int(v), BaseType::Float) => Some(Value::Float(v as f64)),
            (v, b) if v.base_type() == Some(b) => Some(v),
            _ => None,
        }
    }

    /// Structural equality for `==`; tensors are equal when they are the same value. Shared
    /// lists and records compare equal at once; `budget` bounds the elements visited (None
    /// when it runs out).
    pub fn same(&self, other: &Value, budget: &mut u64) -> Option<bool> {
        *budget = budget.checked_sub(1)?;
        Some(match (self, other) {
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a == b,
            (Value::Int(a), Value::Float(b)) | (Value::Float(b), Value::Int(a)) => {
                (*a as f64) == *b
            }
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Str(a), Value::Str(b)) => a == b,
            (Value::None, Value::None) => true,
            (Value::Tensor(a), Value::Tensor(b)) => a == b,
            (Value::List(a), Value::List(b)) => {
                if Rc::ptr_eq(a, b) {
                    return Some(true);
                }
                if a.len() != b.len() {
                    return Some(false);
                }
                for (x, y) in a.iter().zip(b.iter()) {
                    if !x.same(y, budget)? {
                        return Some(false);
                    }
                }
                true
            }
            (Value::Record(a), Value::Record(b)) => {
                if Rc::ptr_eq(a, b) {
                    return Some(true);
                }
                if a.len() != b.len() {
                    return Some(false);
                }
                for ((n, x), (m, y)) in a.iter().zip(b.iter()) {
                    if n != m || !x.same(y, budget)? {
                        return Some(false);
                    }
                }
                true
            }
            _ => false,
        })
    }
}
