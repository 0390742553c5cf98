//! The typed AST of `.rfn` programs. Every node carries the [`Span`] it was parsed from.

use crate::source::FileId;

/// A byte range in one source file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Span {
    pub file: FileId,
    pub start: u32,
    pub end: u32,
}

impl Span {
    /// The smallest span covering both (same file assumed).
    pub fn to(self, other: Span) -> Span {
        Span {
            file: self.file,
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// One parsed file.
#[derive(Clone, Debug, PartialEq)]
pub struct Module {
    pub file: FileId,
    pub items: Vec<Item>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    Import(Import),
    Config(ConfigDecl),
    Block(BlockDef),
    Network(NetworkDef),
}

#[derive(Clone, Debug, PartialEq)]
pub enum ImportTarget {
    /// `import std.resnet;`: a module of the standard library.
    Std(String),
    /// `import "blocks/my.rfn";`: a file relative to the importing file.
    Path(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Import {
    pub target: ImportTarget,
    pub span: Span,
}

/// `config depth: int = 101;`: a compile-time parameter, overridable with `-D depth=50`.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigDecl {
    pub name: Ident,
    pub ty: TypeName,
    pub value: Expr,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BaseType {
    Tensor,
    Int,
    Float,
    Bool,
    Str,
    List,
    Record,
}

impl BaseType {
    pub fn name(self) -> &'static str {
        match self {
            BaseType::Tensor => "tensor",
            BaseType::Int => "int",
            BaseType::Float => "float",
            BaseType::Bool => "bool",
            BaseType::Str => "str",
            BaseType::List => "list",
            BaseType::Record => "record",
        }
    }
}

/// A declared type; `optional` (`tensor?`) also admits `none`.
#[derive(Clone, Debug, PartialEq)]
pub struct TypeName {
    pub base: BaseType,
    pub optional: bool,
    pub span: Span,
}

impl std::fmt::Display for TypeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}{}",
            self.base.name(),
            if self.optional { "?" } else { "" }
        )
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ParamDecl {
    pub name: Ident,
    pub ty: TypeName,
    pub default: Option<Expr>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BlockDef {
    pub name: Ident,
    pub params: Vec<ParamDecl>,
    pub ret: Option<TypeName>,
    pub body: Vec<Stmt>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NetworkDef {
    pub name: Ident,
    pub body: Vec<Stmt>,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElemType {
    F32,
    I32,
}

/// A dimension of a network input: a number, a symbol fixed by `--input`, or (after the
/// first input) an int expression over the symbols and configs, e.g. `H / 4`.
#[derive(Clone, Debug, PartialEq)]
pub enum Dim {
    Fixed(u64, Span),
    Symbol(Ident),
    Expr(Expr),
}

#[derive(Clone, Debug, PartialEq)]
pub enum ForIter {
    Range(Expr, Expr),
    Each(Expr),
}

#[derive(Clone, Debug, PartialEq)]
pub enum StmtKind {
    Let(Ident, Expr),
    Assign(Ident, Expr),
    Input {
        name: Ident,
        dtype: ElemType,
        dims: Vec<Dim>,
    },
    Output(Ident, Expr),
    Objective(Ident, Expr),
    For {
        var: Ident,
        iter: ForIter,
        body: Vec<Stmt>,
    },
    If {
        cond: Expr,
        then: Vec<Stmt>,
        otherwise: Option<Vec<Stmt>>,
    },
    Return(Expr),
    Assert(Expr, Option<String>),
    Expr(Expr),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Stmt {
    pub kind: StmtKind,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnOp {
    Neg,
    Not,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Or => "or",
            BinOp::And => "and",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
        }
    }
}

/// A call argument, positional or named (`stride = 2`).
#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
}

/// The `as name` or `as name[i]` naming of a call.
#[derive(Clone, Debug, PartialEq)]
pub struct CallName {
    /// `as shared NAME`: the call reuses the parameters an earlier call under this name made.
    pub shared: bool,
    pub base: Ident,
    pub index: Option<Box<Expr>>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    None,
    Var(String),
    List(Vec<Expr>),
    Record(Vec<(Ident, Expr)>),
    Call {
        callee: Ident,
        args: Vec<Arg>,
        name: Option<CallName>,
    },
    Index(Box<Expr>, Box<Expr>),
    Field(Box<Expr>, Ident),
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}
