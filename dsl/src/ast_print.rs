//! `--emit ast`: an indented, stable rendering of the AST with each node's line:column.

use std::fmt::Write;

use crate::ast::*;
use crate::source::SourceMap;

/// Renders every module of a program, dependencies first.
pub fn print_modules(modules: &[Module], sources: &SourceMap) -> String {
    let mut p = Printer {
        out: String::new(),
        sources,
    };
    for m in modules {
        let _ = writeln!(p.out, "module {}", sources.file(m.file).name);
        for item in &m.items {
            p.item(item, 1);
        }
    }
    p.out
}

struct Printer<'a> {
    out: String,
    sources: &'a SourceMap,
}

impl Printer<'_> {
    fn at(&self, span: Span) -> String {
        let (l, c) = self.sources.file(span.file).line_col(span.start);
        format!("@{l}:{c}")
    }

    fn line(&mut self, depth: usize, text: String) {
        let _ = writeln!(self.out, "{}{text}", "  ".repeat(depth));
    }

    fn item(&mut self, item: &Item, d: usize) {
        match item {
            Item::Import(i) => {
                let target = match &i.target {
                    ImportTarget::Std(m) => format!("std.{}", m.trim_start_matches("std.")),
                    ImportTarget::Path(p) => format!("\"{p}\""),
                };
                self.line(d, format!("import {target} {}", self.at(i.span)));
            }
            Item::Config(c) => {
                self.line(
                    d,
                    format!("config {}: {} {}", c.name.name, c.ty, self.at(c.span)),
                );
                self.expr(&c.value, d + 1);
            }
            Item::Block(b) => {
                let ret = b
                    .ret
                    .as_ref()
                    .map(|t| format!(" -> {t}"))
                    .unwrap_or_default();
                self.line(d, format!("block {}{ret} {}", b.name.name, self.at(b.span)));
                for p in &b.params {
                    self.line(
                        d + 1,
                        format!("param {}: {} {}", p.name.name, p.ty, self.at(p.span)),
                    );
                    if let Some(def) = &p.default {
                        self.line(d + 2, "default".into());
                        self.expr(def, d + 3);
                    }
                }
                self.stmts(&b.body, d + 1);
            }
            Item::Network(n) => {
                self.line(d, format!("network {} {}", n.name.name, self.at(n.span)));
                self.stmts(&n.body, d + 1);
            }
        }
    }

    fn stmts(&mut self, stmts: &[Stmt], d: usize) {
        for s in stmts {
            self.stmt(s, d);
        }
    }

    fn stmt(&mut self, s: &Stmt, d: usize) {
        let at = self.at(s.span);
        match &s.kind {
            StmtKind::Let(n, e) => {
                self.line(d, format!("let {} {at}", n.name));
                self.expr(e, d + 1);
            }
            StmtKind::Assign(n, e) => {
                self.line(d, format!("assign {} {at}", n.name));
                self.expr(e, d + 1);
            }
            StmtKind::Input {
                name,
                dtype,
                dims: dims_ast,
            } => {
                let dims: Vec<String> = dims_ast
                    .iter()
                    .enumerate()
                    .map(|(i, x)| match x {
                        Dim::Fixed(v, _) => v.to_string(),
                        Dim::Symbol(s) => s.name.clone(),
                        Dim::Expr(_) => format!("<dim {i}>"),
                    })
                    .collect();
                let t = if *dtype == ElemType::F32 {
                    "f32"
                } else {
                    "i32"
                };
                self.line(
                    d,
                    format!("input {}: {t}[{}] {at}", name.name, dims.join(", ")),
                );
                for (i, dim) in dims_ast.iter().enumerate() {
                    if let Dim::Expr(e) = dim {
                        self.line(d + 1, format!("dim {i}"));
                        self.expr(e, d + 2);
                    }
                }
            }
            StmtKind::Output(n, e) => {
                self.line(d, format!("output {} {at}", n.name));
                self.expr(e, d + 1);
            }
            StmtKind::Objective(n, e) => {
                self.line(d, format!("objective {} {at}", n.name));
                self.expr(e, d + 1);
            }
            StmtKind::For { var, iter, body } => {
                self.line(d, format!("for {} {at}", var.name));
                match iter {
                    ForIter::Range(a, b) => {
                        self.line(d + 1, "range".into());
                        self.expr(a, d + 2);
                        self.expr(b, d + 2);
                    }
                    ForIter::Each(e) => {
                        self.line(d + 1, "each".into());
                        self.expr(e, d + 2);
                    }
                }
                self.line(d + 1, "do".into());
                self.stmts(body, d + 2);
            }
            StmtKind::If {
                cond,
                then,
                otherwise,
            } => {
                self.line(d, format!("if {at}"));
                self.expr(cond, d + 1);
                self.line(d + 1, "then".into());
                self.stmts(then, d + 2);
                if let Some(o) = otherwise {
                    self.line(d + 1, "else".into());
                    self.stmts(o, d + 2);
                }
            }
            StmtKind::Return(e) => {
                self.line(d, format!("return {at}"));
                self.expr(e, d + 1);
            }
            StmtKind::Assert(e, msg) => {
                let m = msg.as_ref().map(|m| format!(" {m:?}")).unwrap_or_default();
                self.line(d, format!("assert{m} {at}"));
                self.expr(e, d + 1);
            }
            StmtKind::Expr(e) => {
                self.line(d, format!("expr {at}"));
                self.expr(e, d + 1);
            }
        }
    }

    fn expr(&mut self, e: &Expr, d: usize) {
        let at = self.at(e.span);
        match &e.kind {
            ExprKind::Int(v) => self.line(d, format!("int {v} {at}")),
            ExprKind::Float(v) => self.line(d, format!("float {v:?} {at}")),
            ExprKind::Str(s) => self.line(d, format!("str {s:?} {at}")),
            ExprKind::Bool(b) => self.line(d, format!("bool {b} {at}")),
            ExprKind::None => self.line(d, format!("none {at}")),
            ExprKind::Var(n) => self.line(d, format!("var {n} {at}")),
            ExprKind::List(items) => {
                self.line(d, format!("list {at}"));
                for i in items {
                    self.expr(i, d + 1);
                }
            }
            ExprKind::Record(fields) => {
                self.line(d, format!("record {at}"));
                for (n, v) in fields {
                    self.line(d + 1, format!("field {}", n.name));
                    self.expr(v, d + 2);
                }
            }
            ExprKind::Call { callee, args, name } => {
                let named = match name {
                    Some(n) => format!(
                        " as {}{}{}",
                        if n.shared { "shared " } else { "" },
                        n.base.name,
                        if n.index.is_some() { "[..]" } else { "" }
                    ),
                    None => String::new(),
                };
                self.line(d, format!("call {}{named} {at}", callee.name));
                if let Some(CallName { index: Some(i), .. }) = name {
                    self.line(d + 1, "name index".into());
                    self.expr(i, d + 2);
                }
                for a in args {
                    match &a.name {
                        Some(n) => self.line(d + 1, format!("arg {}", n.name)),
                        None => self.line(d + 1, "arg".into()),
                    }
                    self.expr(&a.value, d + 2);
                }
            }
            ExprKind::Index(b, i) => {
                self.line(d, format!("index {at}"));
                self.expr(b, d + 1);
                self.expr(i, d + 1);
            }
            ExprKind::Field(b, f) => {
                self.line(d, format!("field .{} {at}", f.name));
                self.expr(b, d + 1);
            }
            ExprKind::Unary(op, x) => {
                self.line(
                    d,
                    format!("{} {at}", if *op == UnOp::Neg { "neg" } else { "not" }),
                );
                self.expr(x, d + 1);
            }
            ExprKind::Binary(op, l, r) => {
                self.line(d, format!("binary {} {at}", op.symbol()));
                self.expr(l, d + 1);
                self.expr(r, d + 1);
            }
        }
    }
}
