//! Parses `.rfn` text into the AST. Syntax errors become diagnostics at the failing position,
//! with what was expected in words rather than grammar rule names.

use std::sync::OnceLock;

use pest::iterators::{Pair, Pairs};
use pest::pratt_parser::{Assoc, Op as PrattOp, PrattParser};
use pest::Parser;
use pest_derive::Parser;

use crate::ast::*;
use crate::diagnostic::{Diagnostic, Result};
use crate::source::FileId;

#[derive(Parser)]
#[grammar = "grammar.pest"]
struct RfnParser;

fn pratt() -> &'static PrattParser<Rule> {
    static PRATT: OnceLock<PrattParser<Rule>> = OnceLock::new();
    PRATT.get_or_init(|| {
        PrattParser::new()
            .op(PrattOp::infix(Rule::or_op, Assoc::Left))
            .op(PrattOp::infix(Rule::and_op, Assoc::Left))
            .op(PrattOp::infix(Rule::eq, Assoc::Left)
                | PrattOp::infix(Rule::ne, Assoc::Left)
                | PrattOp::infix(Rule::lt, Assoc::Left)
                | PrattOp::infix(Rule::le, Assoc::Left)
                | PrattOp::infix(Rule::gt, Assoc::Left)
                | PrattOp::infix(Rule::ge, Assoc::Left))
            .op(PrattOp::infix(Rule::add, Assoc::Left) | PrattOp::infix(Rule::sub, Assoc::Left))
            .op(PrattOp::infix(Rule::mul, Assoc::Left)
                | PrattOp::infix(Rule::div, Assoc::Left)
                | PrattOp::infix(Rule::rem, Assoc::Left))
            .op(PrattOp::prefix(Rule::neg) | PrattOp::prefix(Rule::not_op))
            .op(PrattOp::postfix(Rule::index) | PrattOp::postfix(Rule::field))
    })
}

/// Describes a grammar rule for "expected ..." messages.
fn describe(rule: &Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::EOI => "end of file",
        Rule::import => "`import`",
        Rule::config => "`config`",
        Rule::block_def => "`block`",
        Rule::network_def => "`network`",
        Rule::ident | Rule::var => "a name",
        Rule::type_name => "a type (tensor, int, float, bool, str, list, record)",
        Rule::dtype => "an element type (f32 or i32)",
        Rule::expr | Rule::primary => "an expression",
        Rule::string => "a string",
        Rule::module_path => "a module name",
        Rule::int | Rule::dim => "a number",
        Rule::body => "`{`",
        Rule::let_stmt
        | Rule::assign_stmt
        | Rule::input_stmt
        | Rule::output_stmt
        | Rule::objective_stmt
        | Rule::for_stmt
        | Rule::if_stmt
        | Rule::return_stmt
        | Rule::assert_stmt
        | Rule::expr_stmt => "a statement",
        Rule::or_op
        | Rule::and_op
        | Rule::eq
        | Rule::ne
        | Rule::le
        | Rule::ge
        | Rule::lt
        | Rule::gt
        | Rule::add
        | Rule::sub
        | Rule::mul
        | Rule::div
        | Rule::rem => "an operator",
        Rule::index | Rule::field => "`[` or `.`",
        Rule::as_name => "`as`",
        Rule::arg | Rule::args => "an argument",
        Rule::param | Rule::params => "a parameter",
        Rule::range => "a range `a..b`",
        _ => return None,
    })
}

/// Punctuation worth naming in "expected ..." (pest reports literal tokens only through
/// its detailed parse attempts).
const CLOSERS: [&str; 8] = [";", ")", "]", "}", ",", "{", ":", "="];

fn syntax_error(file: FileId, text: &str, err: pest::error::Error<Rule>) -> Box<Diagnostic> {
    let pos = match err.location {
        pest::error::InputLocation::Pos(p) => p,
        pest::error::InputLocation::Span((s, _)) => s,
    };
    let mut expected: Vec<&str> = match &err.variant {
        pest::error::ErrorVariant::ParsingError { positives, .. } => {
            positives.iter().filter_map(describe).collect()
        }
        pest::error::ErrorVariant::CustomError { .. } => Vec::new(),
    };
    expected.sort_unstable();
    expected.dedup();
    let mut tokens: Vec<String> = err
        .parse_attempts()
        .map(|a| a.expected_tokens())
        .unwrap_or_default()
        .into_iter()
        .map(|t| t.to_string())
        .filter(|t| CLOSERS.contains(&t.as_str()))
        .map(|t| format!("`{t}`"))
        .collect();
    tokens.sort_unstable();
    tokens.dedup();
    let found = text[pos..]
        .chars()
        .next()
        .map_or("end of file".to_string(), |c| {
            let token: String = text[pos..]
                .chars()
                .take_while(|ch| ch.is_alphanumeric() || *ch == '_')
                .collect();
            if token.is_empty() {
                format!("`{c}`")
            } else {
                format!("`{token}`")
            }
        });
    let join = |items: &[String]| match items.len() {
        0 => "something else".to_string(),
        1 => items[0].clone(),
        _ => {
            let (last, rest) = items.split_last().expect("non-empty");
            format!("{} or {last}", rest.join(", "))
        }
    };
    // A missing `;` (or closer) is best shown right after the previous token.
    let (wanted, others, at) = if tokens.is_empty() {
        let all: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        (join(&all), None, pos)
    } else {
        let others: Vec<String> = expected
            .iter()
            .map(|s| s.to_string())
            .filter(|o| !tokens.contains(o))
            .collect();
        let before = text[..pos].trim_end().len();
        let at = if tokens.iter().any(|t| t == "`;`") && before < pos {
            before
        } else {
            pos
        };
        (
            join(&tokens),
            (!others.is_empty()).then(|| join(&others)),
            at,
        )
    };
    let len = text[at..]
        .chars()
        .next()
        .map_or(0, char::len_utf8)
        .max(if at == pos { 0 } else { 1 });
    let span = Span {
        file,
        start: at as u32,
        end: (at + len.min(text.len() - at)) as u32,
    };
    let mut d = Diagnostic::new(format!("syntax error: expected {wanted}, found {found}"))
        .label(span, format!("expected {wanted} here"));
    if let Some(others) = others {
        d = d.note(format!("the expression could also continue with {others}"));
    }
    if found == "`=`" && expected.contains(&"an operator") {
        d = d.hint(
            "`=` assigns; compare with `==`, and name call arguments as `f(x, name = value)`",
        );
    } else if expected.contains(&"a name") && found.starts_with('`') {
        let word = found.trim_matches('`');
        if matches!(
            word,
            "let"
                | "for"
                | "in"
                | "if"
                | "else"
                | "return"
                | "block"
                | "network"
                | "import"
                | "config"
                | "assert"
                | "true"
                | "false"
                | "none"
                | "and"
                | "or"
                | "not"
                | "as"
        ) {
            d = d.hint(format!(
                "`{word}` is a keyword and cannot be used as a name"
            ));
        }
    }
    Box::new(d)
}

/// Deepest expression (operators, calls, indexing) a program may nest.
pub const MAX_EXPR_DEPTH: usize = 128;

/// Parses one file.
pub fn parse_module(file: FileId, text: &str) -> Result<Module> {
    crate::prescan::prescan(file, text)?;
    static DETAIL: OnceLock<()> = OnceLock::new();
    DETAIL.get_or_init(|| pest::set_error_detail(true));
    let mut pairs =
        RfnParser::parse(Rule::program, text).map_err(|e| syntax_error(file, text, e))?;
    let program = pairs.next().expect("grammar: program");
    let b = Builder { file };
    let mut items = Vec::new();
    for pair in program.into_inner() {
        match pair.as_rule() {
            Rule::import => items.push(Item::Import(b.import(pair))),
            Rule::config => items.push(Item::Config(b.config(pair)?)),
            Rule::block_def => items.push(Item::Block(b.block(pair)?)),
            Rule::network_def => items.push(Item::Network(b.network(pair)?)),
            Rule::EOI => {}
            r => unreachable!("grammar: unexpected item {r:?}"),
        }
    }
    Ok(Module { file, items })
}

/// Rejects expressions nested deeper than [`MAX_EXPR_DEPTH`] (a long `a + b + ...` chain
/// is nested too), measured without recursion so that the check itself cannot overflow.
fn check_depth(root: &Expr) -> Result<()> {
    let mut stack: Vec<(&Expr, usize)> = vec![(root, 1)];
    while let Some((e, depth)) = stack.pop() {
        if depth > MAX_EXPR_DEPTH {
            let start = Span {
                file: root.span.file,
                start: root.span.start,
                end: root.span.start + 1,
            };
            return Diagnostic::new("expression is nested too deeply")
                .label(start, format!("this expression nests more than {MAX_EXPR_DEPTH} levels of operators and calls"))
                .hint("split it into steps with `let`")
                .err();
        }
        let children: Vec<&Expr> = match &e.kind {
            ExprKind::List(items) => items.iter().collect(),
            ExprKind::Record(fields) => fields.iter().map(|(_, v)| v).collect(),
            ExprKind::Call { args, name, .. } => {
                let mut c: Vec<&Expr> = args.iter().map(|a| &a.value).collect();
                if let Some(CallName { index: Some(i), .. }) = name {
                    c.push(i);
                }
                c
            }
            ExprKind::Index(a, b) | ExprKind::Binary(_, a, b) => vec![a, b],
            ExprKind::Field(a, _) | ExprKind::Unary(_, a) => vec![a],
            _ => Vec::new(),
        };
        stack.extend(children.into_iter().map(|c| (c, depth + 1)));
    }
    Ok(())
}

struct Builder {
    file: FileId,
}

impl Builder {
    fn span(&self, pair: &Pair<Rule>) -> Span {
        let s = pair.as_span();
        Span {
            file: self.file,
            start: s.start() as u32,
            end: s.end() as u32,
        }
    }

    fn ident(&self, pair: Pair<Rule>) -> Ident {
        Ident {
            name: pair.as_str().to_string(),
            span: self.span(&pair),
        }
    }

    fn string(&self, pair: Pair<Rule>) -> String {
        let raw = pair.into_inner().next().map_or("", |p| p.as_str());
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some(other) => out.push(other),
                    None => {}
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    fn import(&self, pair: Pair<Rule>) -> Import {
        let span = self.span(&pair);
        let target = pair.into_inner().next().expect("grammar: import target");
        let target = match target.as_rule() {
            Rule::string => ImportTarget::Path(self.string(target)),
            _ => ImportTarget::Std(target.as_str().to_string()),
        };
        Import { target, span }
    }

    fn type_name(&self, pair: Pair<Rule>) -> TypeName {
        let text = pair.as_str();
        let optional = text.ends_with('?');
        let base = match text.trim_end_matches('?') {
            "tensor" => BaseType::Tensor,
            "int" => BaseType::Int,
            "float" => BaseType::Float,
            "bool" => BaseType::Bool,
            "str" => BaseType::Str,
            "list" => BaseType::List,
            _ => BaseType::Record,
        };
        TypeName {
            base,
            optional,
            span: self.span(&pair),
        }
    }

    fn config(&self, pair: Pair<Rule>) -> Result<ConfigDecl> {
        let span = self.span(&pair);
        let mut it = pair.into_inner();
        let name = self.ident(it.next().expect("grammar: name"));
        let ty = self.type_name(it.next().expect("grammar: type"));
        let value = self.expr(it.next().expect("grammar: value"))?;
        Ok(ConfigDecl {
            name,
            ty,
            value,
            span,
        })
    }

    fn block(&self, pair: Pair<Rule>) -> Result<BlockDef> {
        let span = self.span(&pair);
        let mut it = pair.into_inner();
        let name = self.ident(it.next().expect("grammar: name"));
        let mut params = Vec::new();
        for p in it.next().expect("grammar: params").into_inner() {
            let pspan = self.span(&p);
            let mut pi = p.into_inner();
            let pname = self.ident(pi.next().expect("grammar: param name"));
            let ty = self.type_name(pi.next().expect("grammar: param type"));
            let default = pi.next().map(|d| self.expr(d)).transpose()?;
            params.push(ParamDecl {
                name: pname,
                ty,
                default,
                span: pspan,
            });
        }
        let mut ret = None;
        let mut next = it.next().expect("grammar: body");
        if next.as_rule() == Rule::type_name {
            ret = Some(self.type_name(next));
            next = it.next().expect("grammar: body");
        }
        let body = self.body(next)?;
        Ok(BlockDef {
            name,
            params,
            ret,
            body,
            span,
        })
    }

    fn network(&self, pair: Pair<Rule>) -> Result<NetworkDef> {
        let span = self.span(&pair);
        let mut it = pair.into_inner();
        let name = self.ident(it.next().expect("grammar: name"));
        let body = self.body(it.next().expect("grammar: body"))?;
        Ok(NetworkDef { name, body, span })
    }

    fn body(&self, pair: Pair<Rule>) -> Result<Vec<Stmt>> {
        pair.into_inner().map(|s| self.stmt(s)).collect()
    }

    fn stmt(&self, pair: Pair<Rule>) -> Result<Stmt> {
        let span = self.span(&pair);
        let rule = pair.as_rule();
        let mut it = pair.into_inner();
        let mut next = || it.next().expect("grammar: statement part");
        let kind = match rule {
            Rule::let_stmt => StmtKind::Let(self.ident(next()), self.expr(next())?),
            Rule::assign_stmt => StmtKind::Assign(self.ident(next()), self.expr(next())?),
            Rule::output_stmt => StmtKind::Output(self.ident(next()), self.expr(next())?),
            Rule::objective_stmt => StmtKind::Objective(self.ident(next()), self.expr(next())?),
            Rule::return_stmt => StmtKind::Return(self.expr(next())?),
            Rule::expr_stmt => StmtKind::Expr(self.expr(next())?),
            Rule::input_stmt => {
                let name = self.ident(next());
                let dtype = if next().as_str() == "i32" {
                    ElemType::I32
                } else {
                    ElemType::F32
                };
                let mut dims = Vec::new();
                for d in it {
                    let inner = d.into_inner().next().expect("grammar: dim");
                    dims.push(match inner.as_rule() {
                        Rule::int => Dim::Fixed(self.int_value(&inner)? as u64, self.span(&inner)),
                        Rule::expr => Dim::Expr(self.expr(inner)?),
                        _ => Dim::Symbol(self.ident(inner)),
                    });
                }
                StmtKind::Input { name, dtype, dims }
            }
            Rule::for_stmt => {
                let var = self.ident(next());
                let iter_pair = next();
                let iter = if iter_pair.as_rule() == Rule::range {
                    let mut r = iter_pair.into_inner();
                    let lo = self.expr(r.next().expect("grammar: range start"))?;
                    let hi = self.expr(r.next().expect("grammar: range end"))?;
                    ForIter::Range(lo, hi)
                } else {
                    ForIter::Each(self.expr(iter_pair)?)
                };
                let body = self.body(next())?;
                StmtKind::For { var, iter, body }
            }
            Rule::if_stmt => {
                let cond = self.expr(next())?;
                let then = self.body(next())?;
                let otherwise = match it.next() {
                    None => None,
                    Some(p) if p.as_rule() == Rule::if_stmt => Some(vec![self.stmt(p)?]),
                    Some(p) => Some(self.body(p)?),
                };
                StmtKind::If {
                    cond,
                    then,
                    otherwise,
                }
            }
            Rule::assert_stmt => {
                let cond = self.expr(next())?;
                let message = it.next().map(|m| self.string(m));
                StmtKind::Assert(cond, message)
            }
            r => unreachable!("grammar: unexpected statement {r:?}"),
        };
        Ok(Stmt { kind, span })
    }

    fn int_value(&self, pair: &Pair<Rule>) -> Result<i64> {
        pair.as_str().parse::<i64>().or_else(|_| {
            Diagnostic::new("integer literal is too large")
                .label(self.span(pair), "does not fit in 64 bits")
                .err()
        })
    }

    fn expr(&self, pair: Pair<Rule>) -> Result<Expr> {
        let e = self.pratt_expr(pair.into_inner())?;
        check_depth(&e)?;
        Ok(e)
    }

    fn pratt_expr(&self, pairs: Pairs<Rule>) -> Result<Expr> {
        pratt()
            .map_primary(|p| self.primary(p))
            .map_prefix(|op, rhs| {
                let rhs = rhs?;
                let span = self.span(&op).to(rhs.span);
                let op = if op.as_rule() == Rule::neg {
                    UnOp::Neg
                } else {
                    UnOp::Not
                };
                Ok(Expr {
                    kind: ExprKind::Unary(op, Box::new(rhs)),
                    span,
                })
            })
            .map_postfix(|lhs, op| {
                let lhs = lhs?;
                let span = lhs.span.to(self.span(&op));
                let kind = match op.as_rule() {
                    Rule::index => {
                        let index = self.expr(op.into_inner().next().expect("grammar: index"))?;
                        ExprKind::Index(Box::new(lhs), Box::new(index))
                    }
                    _ => {
                        let field = self.ident(op.into_inner().next().expect("grammar: field"));
                        ExprKind::Field(Box::new(lhs), field)
                    }
                };
                Ok(Expr { kind, span })
            })
            .map_infix(|lhs, op, rhs| {
                let (lhs, rhs) = (lhs?, rhs?);
                let bin = match op.as_rule() {
                    Rule::or_op => BinOp::Or,
                    Rule::and_op => BinOp::And,
                    Rule::eq => BinOp::Eq,
                    Rule::ne => BinOp::Ne,
                    Rule::lt => BinOp::Lt,
                    Rule::le => BinOp::Le,
                    Rule::gt => BinOp::Gt,
                    Rule::ge => BinOp::Ge,
                    Rule::add => BinOp::Add,
                    Rule::sub => BinOp::Sub,
                    Rule::mul => BinOp::Mul,
                    Rule::div => BinOp::Div,
                    _ => BinOp::Rem,
                };
                let span = lhs.span.to(rhs.span);
                Ok(Expr {
                    kind: ExprKind::Binary(bin, Box::new(lhs), Box::new(rhs)),
                    span,
                })
            })
            .parse(pairs)
    }

    fn primary(&self, pair: Pair<Rule>) -> Result<Expr> {
        let span = self.span(&pair);
        let kind = match pair.as_rule() {
            Rule::int => ExprKind::Int(self.int_value(&pair)?),
            Rule::float => match pair.as_str().parse::<f64>() {
                Ok(v) if v.is_finite() => ExprKind::Float(v),
                _ => {
                    return Diagnostic::new("number out of range")
                        .label(span, "too large for a 64-bit float")
                        .err()
                }
            },
            Rule::string => ExprKind::Str(self.string(pair)),
            Rule::boolean => ExprKind::Bool(pair.as_str() == "true"),
            Rule::none => ExprKind::None,
            Rule::var => ExprKind::Var(pair.as_str().to_string()),
            Rule::expr => return self.expr(pair),
            Rule::list => ExprKind::List(
                pair.into_inner()
                    .map(|e| self.expr(e))
                    .collect::<Result<_>>()?,
            ),
            Rule::record => {
                let mut fields = Vec::new();
                for f in pair.into_inner() {
                    let mut fi = f.into_inner();
                    let name = self.ident(fi.next().expect("grammar: field name"));
                    let value = self.expr(fi.next().expect("grammar: field value"))?;
                    fields.push((name, value));
                }
                ExprKind::Record(fields)
            }
            Rule::call => {
                let mut it = pair.into_inner();
                let callee = self.ident(it.next().expect("grammar: callee"));
                let mut args = Vec::new();
                for a in it.next().expect("grammar: args").into_inner() {
                    let mut ai: Vec<Pair<Rule>> = a.into_inner().collect();
                    let value = self.expr(ai.pop().expect("grammar: arg value"))?;
                    let name = ai.pop().map(|n| self.ident(n));
                    args.push(Arg { name, value });
                }
                let name = match it.next() {
                    Some(n) => {
                        let nspan = self.span(&n);
                        let mut ni = n.into_inner().peekable();
                        let shared = ni.next_if(|p| p.as_rule() == Rule::shared).is_some();
                        let base = self.ident(ni.next().expect("grammar: as name"));
                        let index = ni.next().map(|e| self.expr(e)).transpose()?.map(Box::new);
                        Some(CallName {
                            shared,
                            base,
                            index,
                            span: nspan,
                        })
                    }
                    None => None,
                };
                ExprKind::Call { callee, args, name }
            }
            r => unreachable!("grammar: unexpected primary {r:?}"),
        };
        Ok(Expr { kind, span })
    }
}
