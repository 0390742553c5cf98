//! An interpreter of kernel IR: the oracle for kernel generators.
//!
//! [`run_kernel`] executes a [`KernelFn`] exactly as the GPU would: blocks run one after the
//! other, and the threads of a block run by *thread-loop fission* ([`fission`]): each
//! barrier-free stretch of the body runs for thread 0, then thread 1, ..., so a `Barrier`
//! is the boundary between two stretches. A `for`/`if` that contains a barrier is uniform
//! (the same for every thread, see [`KernelFn::check`]), so it runs once per block with its
//! body split the same way; a `Let` whose value cannot differ between threads is evaluated
//! once per block, before the stretch it appears in. The host printer
//! ([`super::mlir::host_module`]) uses the same fission, so the interpreter runs exactly the
//! code the host runs.
//!
//! Shared arrays are fresh for every block and private arrays fresh for every thread of every
//! block; both are filled with NaN (f32) or 0 (integers), so reading memory that was never
//! written shows up in the results. Out-of-bounds accesses, division by zero and oversized
//! shifts are errors naming the buffer, the index and the thread.
//!
//! Values: index and i64 are 64-bit (index signed, i64 wrapping unsigned: division, min,
//! max, comparisons and conversion to f32 are unsigned), i32 is 32-bit signed with wrapping
//! arithmetic, f32 arithmetic is IEEE single precision with `min`/`max` propagating NaN
//! (`arith.minimumf`/`maximumf`), comparisons of floats are ordered (false with a NaN)
//! except `Ne` (true with a NaN).
//!
//! Expressions and statements are compiled once into closures over a machine whose
//! variables and arrays are indexed by number, so the hot loop does no lookups.

use super::kir::{type_of, BinOp, Buf, CmpOp, Expr, KernelFn, KirError, Stmt, Ty, UnOp, Var};

/// The contents of one parameter buffer.
#[derive(Clone, Debug, PartialEq)]
pub enum KirBuffer {
    F32(Vec<f32>),
    I32(Vec<i32>),
}

impl KirBuffer {
    pub fn len(&self) -> usize {
        match self {
            KirBuffer::F32(v) => v.len(),
            KirBuffer::I32(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn elem(&self) -> Ty {
        match self {
            KirBuffer::F32(_) => Ty::F32,
            KirBuffer::I32(_) => Ty::I32,
        }
    }

    pub fn as_f32(&self) -> Option<&[f32]> {
        match self {
            KirBuffer::F32(v) => Some(v),
            KirBuffer::I32(_) => None,
        }
    }

    pub fn as_i32(&self) -> Option<&[i32]> {
        match self {
            KirBuffer::I32(v) => Some(v),
            KirBuffer::F32(_) => None,
        }
    }
}

// ----- thread-loop fission (shared with the host printer) --------------------------------

/// One step of a block after thread-loop fission.
#[derive(Debug)]
pub(crate) enum Step<'k> {
    /// A `Let` whose value is the same for every thread: evaluated once per block.
    Uniform(Var, &'k Expr),
    /// A barrier-free stretch of statements, run by every thread in turn.
    Threads(Vec<&'k Stmt>),
    /// A uniform loop whose body contains a barrier.
    For {
        var: Var,
        lo: &'k Expr,
        hi: &'k Expr,
        step: i64,
        body: Vec<Step<'k>>,
    },
    /// A uniform conditional whose branches contain a barrier.
    If {
        cond: &'k Expr,
        then: Vec<Step<'k>>,
        otherwise: Vec<Step<'k>>,
    },
}

/// Splits the body of a (checked) kernel at its barriers.
///
/// A `Let` is hoisted out of its stretch (becomes a [`Step::Uniform`]) when its value uses no
/// thread id, no shared or private data and only variables that are themselves block-level,
/// and it reads no parameter that its stretch stored to before it (there each thread could
/// see its own store). Also verifies that every variable used in a stretch is either
/// block-level or bound earlier in the same stretch, so that the host function is valid SSA.
pub(crate) fn fission(k: &KernelFn) -> Result<Vec<Step<'_>>, KirError> {
    let mut f = Fission {
        uniform: vec![false; k.vars.len()],
    };
    f.steps(&k.body)
}

struct Fission {
    /// Variables bound at block level (visible to every stretch).
    uniform: Vec<bool>,
}

impl Fission {
    fn steps<'k>(&mut self, stmts: &'k [Stmt]) -> Result<Vec<Step<'k>>, KirError> {
        let saved = self.uniform.clone();
        let mut out = Vec::new();
        let mut stretch: Vec<&'k Stmt> = Vec::new();
        let mut stored: Vec<usize> = Vec::new();
        for s in stmts {
            match s {
                Stmt::Barrier => self.flush(&mut out, &mut stretch, &mut stored)?,
                Stmt::For {
                    var,
                    lo,
                    hi,
                    step,
                    body,
                } if KernelFn::has_barrier(body) => {
                    self.flush(&mut out, &mut stretch, &mut stored)?;
                    self.need_uniform(lo, "loop bound")?;
                    self.need_uniform(hi, "loop bound")?;
                    self.uniform[var.0 as usize] = true;
                    let body = self.steps(body)?;
                    self.uniform[var.0 as usize] = false;
                    out.push(Step::For {
                        var: *var,
                        lo,
                        hi,
                        step: *step,
                        body,
                    });
                }
                Stmt::If {
                    cond,
                    then,
                    otherwise,
                } if KernelFn::has_barrier(then) || KernelFn::has_barrier(otherwise) => {
                    self.flush(&mut out, &mut stretch, &mut stored)?;
                    self.need_uniform(cond, "condition")?;
                    let then = self.steps(then)?;
                    let otherwise = self.steps(otherwise)?;
                    out.push(Step::If {
                        cond,
                        then,
                        otherwise,
                    });
                }
                Stmt::Let(v, e) if self.is_uniform(e) && !reads_any(e, &stored) => {
                    self.uniform[v.0 as usize] = true;
                    out.push(Step::Uniform(*v, e));
                }
                _ => {
                    stores_of(s, &mut stored);
                    stretch.push(s);
                }
            }
        }
        self.flush(&mut out, &mut stretch, &mut stored)?;
        self.uniform = saved;
        Ok(out)
    }

    fn flush<'k>(
        &mut self,
        out: &mut Vec<Step<'k>>,
        stretch: &mut Vec<&'k Stmt>,
        stored: &mut Vec<usize>,
    ) -> Result<(), KirError> {
        if stretch.is_empty() {
            return Ok(());
        }
        let mut defined = self.uniform.clone();
        for s in stretch.iter() {
            self.validate(s, &mut defined)?;
        }
        out.push(Step::Threads(std::mem::take(stretch)));
        stored.clear();
        Ok(())
    }

    fn is_uniform(&self, e: &Expr) -> bool {
        match e {
            Expr::ThreadId | Expr::Load(Buf::Shared(_) | Buf::Private(_), _) => false,
            Expr::Int(_) | Expr::F32(_) | Expr::BlockId => true,
            Expr::Var(v) => self.uniform.get(v.0 as usize).copied().unwrap_or(false),
            Expr::Load(Buf::Param(_), a) | Expr::Unary(_, a) | Expr::Cast(_, a) => {
                self.is_uniform(a)
            }
            Expr::Bin(_, a, b) | Expr::Cmp(_, a, b) => self.is_uniform(a) && self.is_uniform(b),
            Expr::Select(c, a, b) => self.is_uniform(c) && self.is_uniform(a) && self.is_uniform(b),
        }
    }

    fn need_uniform(&self, e: &Expr, what: &str) -> Result<(), KirError> {
        if self.is_uniform(e) {
            Ok(())
        } else {
            Err(KirError(format!(
                "the {what} of a construct with a barrier is not a block-level value"
            )))
        }
    }

    /// Checks that `s` only uses variables of `defined` (block-level or earlier in the
    /// stretch), with the bodies of loops and conditionals as nested scopes.
    fn validate(&self, s: &Stmt, defined: &mut Vec<bool>) -> Result<(), KirError> {
        let uses = |e: &Expr, defined: &Vec<bool>| -> Result<(), KirError> {
            let mut vars = Vec::new();
            vars_of(e, &mut vars);
            for v in vars {
                if !defined.get(v.0 as usize).copied().unwrap_or(false) {
                    return Err(KirError(format!(
                        "v{} is used outside the scope or barrier-free stretch that binds it",
                        v.0
                    )));
                }
            }
            Ok(())
        };
        match s {
            Stmt::Let(v, e) => {
                uses(e, defined)?;
                defined[v.0 as usize] = true;
            }
            Stmt::Store(_, i, v) => {
                uses(i, defined)?;
                uses(v, defined)?;
            }
            Stmt::For {
                var, lo, hi, body, ..
            } => {
                uses(lo, defined)?;
                uses(hi, defined)?;
                let mut inner = defined.clone();
                inner[var.0 as usize] = true;
                for s in body {
                    self.validate(s, &mut inner)?;
                }
            }
            Stmt::If {
                cond,
                then,
                otherwise,
            } => {
                uses(cond, defined)?;
                for branch in [then, otherwise] {
                    let mut inner = defined.clone();
                    for s in branch {
                        self.validate(s, &mut inner)?;
                    }
                }
            }
            Stmt::Barrier => {
                return Err(KirError("a barrier inside a barrier-free stretch".into()));
            }
        }
        Ok(())
    }
}

fn vars_of(e: &Expr, out: &mut Vec<Var>) {
    match e {
        Expr::Var(v) => out.push(*v),
        Expr::Int(_) | Expr::F32(_) | Expr::ThreadId | Expr::BlockId => {}
        Expr::Load(_, a) | Expr::Unary(_, a) | Expr::Cast(_, a) => vars_of(a, out),
        Expr::Bin(_, a, b) | Expr::Cmp(_, a, b) => {
            vars_of(a, out);
            vars_of(b, out);
        }
        Expr::Select(c, a, b) => {
            vars_of(c, out);
            vars_of(a, out);
            vars_of(b, out);
        }
    }
}

/// Whether `e` loads from one of the parameters `params`.
fn reads_any(e: &Expr, params: &[usize]) -> bool {
    match e {
        Expr::Load(Buf::Param(p), a) => params.contains(p) || reads_any(a, params),
        Expr::Load(_, a) | Expr::Unary(_, a) | Expr::Cast(_, a) => reads_any(a, params),
        Expr::Int(_) | Expr::F32(_) | Expr::Var(_) | Expr::ThreadId | Expr::BlockId => false,
        Expr::Bin(_, a, b) | Expr::Cmp(_, a, b) => reads_any(a, params) || reads_any(b, params),
        Expr::Select(c, a, b) => {
            reads_any(c, params) || reads_any(a, params) || reads_any(b, params)
        }
    }
}

/// Adds the parameters `s` stores to.
fn stores_of(s: &Stmt, out: &mut Vec<usize>) {
    match s {
        Stmt::Store(Buf::Param(p), ..) => out.push(*p),
        Stmt::For { body, .. } => body.iter().for_each(|s| stores_of(s, out)),
        Stmt::If {
            then, otherwise, ..
        } => then.iter().chain(otherwise).for_each(|s| stores_of(s, out)),
        _ => {}
    }
}

// ----- typing shared with the printer -------------------------------------------------------

/// The type of `e` where its context wants `want` (integer literals take it).
pub(crate) fn ty_in(k: &KernelFn, e: &Expr, want: Ty) -> Ty {
    type_of(k, e).unwrap_or(want)
}

/// The operand type of a binary operation or comparison; `None` for the result of a
/// comparison (its operands decide, index by default).
pub(crate) fn operand_ty(k: &KernelFn, a: &Expr, b: &Expr, want: Ty) -> Ty {
    type_of(k, a).or_else(|| type_of(k, b)).unwrap_or(want)
}

/// Checks that an integer binary operation is defined on `t`.
pub(crate) fn check_bin(op: BinOp, t: Ty) -> Result<(), KirError> {
    let ok = match t {
        Ty::F32 => matches!(
            op,
            BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Min | BinOp::Max
        ),
        Ty::Bool => matches!(op, BinOp::And | BinOp::Or | BinOp::Xor),
        Ty::Index | Ty::I64 | Ty::I32 => true,
    };
    if ok {
        Ok(())
    } else {
        Err(KirError(format!("{op:?} of {t:?} values")))
    }
}

pub(crate) fn check_cmp(op: CmpOp, t: Ty) -> Result<(), KirError> {
    if t == Ty::Bool && !matches!(op, CmpOp::Eq | CmpOp::Ne) {
        return Err(KirError(format!("{op:?} of booleans")));
    }
    Ok(())
}

pub(crate) fn check_unary(op: UnOp, t: Ty) -> Result<(), KirError> {
    let ok = match op {
        UnOp::Neg => t != Ty::Bool,
        UnOp::Exp | UnOp::Log | UnOp::Sqrt => t == Ty::F32,
        UnOp::Not => t != Ty::F32,
    };
    if ok {
        Ok(())
    } else {
        Err(KirError(format!("{op:?} of {t:?}")))
    }
}

/// Checks that a subscript is an index.
pub(crate) fn check_subscript(k: &KernelFn, i: &Expr) -> Result<(), KirError> {
    match type_of(k, i) {
        None | Some(Ty::Index) => Ok(()),
        Some(t) => Err(KirError(format!("subscript of type {t:?} (must be index)"))),
    }
}

// ----- the machine --------------------------------------------------------------------------

/// Where an array lives in the machine: its storage class and slot.
#[derive(Clone, Copy, Debug)]
enum Loc {
    /// `fmem[slot]`.
    F(usize),
    /// `imem[slot]` (i32 parameters).
    I32(usize),
    /// `lmem[slot]` (integer and boolean shared or private arrays, as i64).
    L(usize),
}

#[derive(Clone, Copy, Debug)]
struct ArrayInfo {
    loc: Loc,
    len: i64,
    /// Private arrays are indexed `tid * len + i`.
    private: bool,
    buf: Buf,
}

struct Machine {
    ints: Vec<i64>,
    floats: Vec<f32>,
    fmem: Vec<Vec<f32>>,
    imem: Vec<Vec<i32>>,
    lmem: Vec<Vec<i64>>,
    tid: i64,
    bid: i64,
    err: Option<KirError>,
}

impl Machine {
    #[cold]
    fn fail(&mut self, msg: String) {
        if self.err.is_none() {
            self.err = Some(KirError(format!(
                "{msg} (block {}, thread {})",
                self.bid, self.tid
            )));
        }
    }

    #[cold]
    fn out_of_bounds(&mut self, what: &str, a: &ArrayInfo, i: i64) {
        let name = match a.buf {
            Buf::Param(p) => format!("parameter {p}"),
            Buf::Shared(s) => format!("shared array {s}"),
            Buf::Private(s) => format!("private array {s}"),
        };
        self.fail(format!(
            "{what} {name} at index {i} out of bounds (length {})",
            a.len
        ));
    }

    /// The position of element `i` of `a` in its storage, or `None` (error recorded).
    #[inline]
    fn at(&mut self, what: &str, a: &ArrayInfo, i: i64) -> Option<usize> {
        if i < 0 || i >= a.len {
            self.out_of_bounds(what, a, i);
            return None;
        }
        Some(if a.private {
            (self.tid * a.len + i) as usize
        } else {
            i as usize
        })
    }
}

type IntFn = Box<dyn Fn(&mut Machine) -> i64>;
type FloatFn = Box<dyn Fn(&mut Machine) -> f32>;
type StmtFn = Box<dyn Fn(&mut Machine)>;

enum Val {
    I(IntFn),
    F(FloatFn),
}

enum XStep {
    Uniform(StmtFn),
    Threads(Vec<StmtFn>),
    For {
        var: usize,
        lo: IntFn,
        hi: IntFn,
        step: i64,
        body: Vec<XStep>,
    },
    If {
        cond: IntFn,
        then: Vec<XStep>,
        otherwise: Vec<XStep>,
    },
}

struct Compiler<'k> {
    k: &'k KernelFn,
    arrays: Vec<ArrayInfo>,
    nparams: usize,
    nshared: usize,
}

impl Compiler<'_> {
    fn array(&self, buf: Buf) -> Result<ArrayInfo, KirError> {
        let i = match buf {
            Buf::Param(i) if i < self.nparams => i,
            Buf::Shared(i) if i < self.nshared => self.nparams + i,
            Buf::Private(i) if self.nparams + self.nshared + i < self.arrays.len() => {
                self.nparams + self.nshared + i
            }
            _ => return Err(KirError(format!("undeclared {buf:?}"))),
        };
        Ok(self.arrays[i])
    }

    fn steps(&self, steps: &[Step<'_>]) -> Result<Vec<XStep>, KirError> {
        steps
            .iter()
            .map(|s| {
                Ok(match s {
                    Step::Uniform(v, e) => XStep::Uniform(self.let_(*v, e)?),
                    Step::Threads(stmts) => XStep::Threads(
                        stmts
                            .iter()
                            .map(|s| self.stmt(s))
                            .collect::<Result<_, _>>()?,
                    ),
                    Step::For {
                        var,
                        lo,
                        hi,
                        step,
                        body,
                    } => XStep::For {
                        var: var.0 as usize,
                        lo: self.int(lo, Ty::Index)?,
                        hi: self.int(hi, Ty::Index)?,
                        step: check_step(*step)?,
                        body: self.steps(body)?,
                    },
                    Step::If {
                        cond,
                        then,
                        otherwise,
                    } => XStep::If {
                        cond: self.int(cond, Ty::Bool)?,
                        then: self.steps(then)?,
                        otherwise: self.steps(otherwise)?,
                    },
                })
            })
            .collect()
    }

    fn let_(&self, v: Var, e: &Expr) -> Result<StmtFn, KirError> {
        let i = v.0 as usize;
        let ty = *self
            .k
            .vars
            .get(i)
            .ok_or_else(|| KirError(format!("undeclared v{i}")))?;
        Ok(match self.expr(e, ty)? {
            Val::I(f) => Box::new(move |m| {
                let x = f(m);
                m.ints[i] = x;
            }),
            Val::F(f) => Box::new(move |m| {
                let x = f(m);
                m.floats[i] = x;
            }),
        })
    }

    fn block(&self, stmts: &[Stmt]) -> Result<Vec<StmtFn>, KirError> {
        stmts.iter().map(|s| self.stmt(s)).collect()
    }

    fn stmt(&self, s: &Stmt) -> Result<StmtFn, KirError> {
        Ok(match s {
            Stmt::Let(v, e) => self.let_(*v, e)?,
            Stmt::Store(buf, i, v) => {
                check_subscript(self.k, i)?;
                let a = self.array(*buf)?;
                let ix = self.int(i, Ty::Index)?;
                match a.loc {
                    Loc::F(slot) => {
                        let val = self.float(v)?;
                        Box::new(move |m| {
                            let i = ix(m);
                            let x = val(m);
                            if let Some(p) = m.at("store to", &a, i) {
                                m.fmem[slot][p] = x;
                            }
                        })
                    }
                    Loc::I32(slot) => {
                        let val = self.int(v, Ty::I32)?;
                        Box::new(move |m| {
                            let i = ix(m);
                            let x = val(m);
                            if let Some(p) = m.at("store to", &a, i) {
                                m.imem[slot][p] = x as i32;
                            }
                        })
                    }
                    Loc::L(slot) => {
                        let elem = self.elem(*buf);
                        let val = self.int(v, elem)?;
                        Box::new(move |m| {
                            let i = ix(m);
                            let x = val(m);
                            if let Some(p) = m.at("store to", &a, i) {
                                m.lmem[slot][p] = x;
                            }
                        })
                    }
                }
            }
            Stmt::For {
                var,
                lo,
                hi,
                step,
                body,
            } => {
                let v = var.0 as usize;
                let lo = self.int(lo, Ty::Index)?;
                let hi = self.int(hi, Ty::Index)?;
                let step = check_step(*step)?;
                let body = self.block(body)?;
                Box::new(move |m| {
                    let (mut i, hi) = (lo(m), hi(m));
                    while i < hi && m.err.is_none() {
                        m.ints[v] = i;
                        for s in &body {
                            s(m);
                        }
                        i = i.saturating_add(step);
                    }
                })
            }
            Stmt::If {
                cond,
                then,
                otherwise,
            } => {
                let cond = self.int(cond, Ty::Bool)?;
                let then = self.block(then)?;
                let otherwise = self.block(otherwise)?;
                Box::new(move |m| {
                    let body = if cond(m) != 0 { &then } else { &otherwise };
                    for s in body {
                        s(m);
                    }
                })
            }
            Stmt::Barrier => {
                return Err(KirError("a barrier inside a barrier-free stretch".into()))
            }
        })
    }

    fn elem(&self, buf: Buf) -> Ty {
        super::kir::buf_elem(self.k, buf).unwrap_or(Ty::Index)
    }

    fn int(&self, e: &Expr, want: Ty) -> Result<IntFn, KirError> {
        match self.expr(e, want)? {
            Val::I(f) => Ok(f),
            Val::F(_) => Err(KirError(format!("an f32 where {want:?} is needed"))),
        }
    }

    fn float(&self, e: &Expr) -> Result<FloatFn, KirError> {
        match self.expr(e, Ty::F32)? {
            Val::F(f) => Ok(f),
            Val::I(_) => Err(KirError("an integer where f32 is needed".into())),
        }
    }

    fn expr(&self, e: &Expr, want: Ty) -> Result<Val, KirError> {
        let t = ty_in(self.k, e, want);
        Ok(match e {
            Expr::Int(v) => {
                let v = *v;
                match t {
                    Ty::F32 => Val::F(Box::new(move |_| v as f32)),
                    Ty::I32 => {
                        let v = v as i32 as i64;
                        Val::I(Box::new(move |_| v))
                    }
                    Ty::Bool => {
                        let v = (v != 0) as i64;
                        Val::I(Box::new(move |_| v))
                    }
                    Ty::Index | Ty::I64 => Val::I(Box::new(move |_| v)),
                }
            }
            Expr::F32(v) => {
                let v = *v;
                Val::F(Box::new(move |_| v))
            }
            Expr::Var(v) => {
                let i = v.0 as usize;
                if i >= self.k.vars.len() {
                    return Err(KirError(format!("undeclared v{i}")));
                }
                if t == Ty::F32 {
                    Val::F(Box::new(move |m| m.floats[i]))
                } else {
                    Val::I(Box::new(move |m| m.ints[i]))
                }
            }
            Expr::ThreadId => Val::I(Box::new(|m| m.tid)),
            Expr::BlockId => Val::I(Box::new(|m| m.bid)),
            Expr::Bin(op, a, b) => {
                check_bin(*op, t)?;
                if t == Ty::F32 {
                    Val::F(float_bin(*op, self.float(a)?, self.float(b)?))
                } else {
                    // A literal right operand is the common case (offsets, strides).
                    if let Expr::Int(c) = **b {
                        if let Some(f) = int_bin_const(*op, t, self.int(a, t)?, c) {
                            return Ok(Val::I(f));
                        }
                    }
                    Val::I(int_bin(*op, t, self.int(a, t)?, self.int(b, t)?))
                }
            }
            Expr::Cmp(op, a, b) => {
                let ot = operand_ty(self.k, a, b, Ty::Index);
                check_cmp(*op, ot)?;
                if ot == Ty::F32 {
                    let (x, y) = (self.float(a)?, self.float(b)?);
                    Val::I(match op {
                        CmpOp::Lt => Box::new(move |m| (x(m) < y(m)) as i64),
                        CmpOp::Le => Box::new(move |m| (x(m) <= y(m)) as i64),
                        CmpOp::Gt => Box::new(move |m| (x(m) > y(m)) as i64),
                        CmpOp::Ge => Box::new(move |m| (x(m) >= y(m)) as i64),
                        CmpOp::Eq => Box::new(move |m| (x(m) == y(m)) as i64),
                        CmpOp::Ne => Box::new(move |m| (x(m) != y(m)) as i64),
                    })
                } else {
                    let (x, y) = (self.int(a, ot)?, self.int(b, ot)?);
                    Val::I(if ot == Ty::I64 {
                        match op {
                            CmpOp::Lt => Box::new(move |m| ((x(m) as u64) < (y(m) as u64)) as i64),
                            CmpOp::Le => Box::new(move |m| ((x(m) as u64) <= (y(m) as u64)) as i64),
                            CmpOp::Gt => Box::new(move |m| ((x(m) as u64) > (y(m) as u64)) as i64),
                            CmpOp::Ge => Box::new(move |m| ((x(m) as u64) >= (y(m) as u64)) as i64),
                            CmpOp::Eq => Box::new(move |m| (x(m) == y(m)) as i64),
                            CmpOp::Ne => Box::new(move |m| (x(m) != y(m)) as i64),
                        }
                    } else {
                        match op {
                            CmpOp::Lt => Box::new(move |m| (x(m) < y(m)) as i64),
                            CmpOp::Le => Box::new(move |m| (x(m) <= y(m)) as i64),
                            CmpOp::Gt => Box::new(move |m| (x(m) > y(m)) as i64),
                            CmpOp::Ge => Box::new(move |m| (x(m) >= y(m)) as i64),
                            CmpOp::Eq => Box::new(move |m| (x(m) == y(m)) as i64),
                            CmpOp::Ne => Box::new(move |m| (x(m) != y(m)) as i64),
                        }
                    })
                }
            }
            Expr::Select(c, a, b) => {
                let c = self.int(c, Ty::Bool)?;
                // Both sides are evaluated, as on the GPU.
                if t == Ty::F32 {
                    let (x, y) = (self.float(a)?, self.float(b)?);
                    Val::F(Box::new(move |m| {
                        let (c, x, y) = (c(m), x(m), y(m));
                        if c != 0 {
                            x
                        } else {
                            y
                        }
                    }))
                } else {
                    let (x, y) = (self.int(a, t)?, self.int(b, t)?);
                    Val::I(Box::new(move |m| {
                        let (c, x, y) = (c(m), x(m), y(m));
                        if c != 0 {
                            x
                        } else {
                            y
                        }
                    }))
                }
            }
            Expr::Load(buf, i) => {
                check_subscript(self.k, i)?;
                let a = self.array(*buf)?;
                let ix = self.int(i, Ty::Index)?;
                match a.loc {
                    Loc::F(slot) => Val::F(Box::new(move |m| {
                        let i = ix(m);
                        match m.at("load from", &a, i) {
                            Some(p) => m.fmem[slot][p],
                            None => 0.0,
                        }
                    })),
                    Loc::I32(slot) => Val::I(Box::new(move |m| {
                        let i = ix(m);
                        match m.at("load from", &a, i) {
                            Some(p) => m.imem[slot][p] as i64,
                            None => 0,
                        }
                    })),
                    Loc::L(slot) => Val::I(Box::new(move |m| {
                        let i = ix(m);
                        match m.at("load from", &a, i) {
                            Some(p) => m.lmem[slot][p],
                            None => 0,
                        }
                    })),
                }
            }
            Expr::Unary(op, a) => {
                check_unary(*op, t)?;
                if t == Ty::F32 {
                    let x = self.float(a)?;
                    Val::F(match op {
                        UnOp::Neg => Box::new(move |m| -x(m)),
                        UnOp::Exp => Box::new(move |m| x(m).exp()),
                        UnOp::Log => Box::new(move |m| x(m).ln()),
                        UnOp::Sqrt => Box::new(move |m| x(m).sqrt()),
                        UnOp::Not => unreachable!("checked"),
                    })
                } else {
                    let x = self.int(a, t)?;
                    Val::I(match (op, t) {
                        (UnOp::Neg, Ty::I32) => {
                            Box::new(move |m| (x(m) as i32).wrapping_neg() as i64)
                        }
                        (UnOp::Neg, _) => Box::new(move |m| x(m).wrapping_neg()),
                        (UnOp::Not, Ty::Bool) => Box::new(move |m| x(m) ^ 1),
                        (UnOp::Not, _) => Box::new(move |m| !x(m)),
                        _ => unreachable!("checked"),
                    })
                }
            }
            Expr::Cast(to, a) => {
                let from = ty_in(self.k, a, Ty::Index);
                let to = *to;
                if from == to {
                    return self.expr(a, to);
                }
                match (from, to) {
                    (Ty::F32, Ty::Bool) => {
                        let x = self.float(a)?;
                        Val::I(Box::new(move |m| (x(m) != 0.0) as i64))
                    }
                    (Ty::F32, Ty::I32) => {
                        let x = self.float(a)?;
                        Val::I(Box::new(move |m| x(m) as i32 as i64))
                    }
                    (Ty::F32, Ty::Index) => {
                        let x = self.float(a)?;
                        Val::I(Box::new(move |m| x(m) as i64))
                    }
                    (Ty::F32, Ty::I64) => {
                        let x = self.float(a)?;
                        Val::I(Box::new(move |m| x(m) as u64 as i64))
                    }
                    (_, Ty::F32) => {
                        let x = self.int(a, from)?;
                        Val::F(if from == Ty::I64 {
                            Box::new(move |m| x(m) as u64 as f32)
                        } else {
                            Box::new(move |m| x(m) as f32)
                        })
                    }
                    (_, Ty::Bool) => {
                        let x = self.int(a, from)?;
                        Val::I(Box::new(move |m| (x(m) != 0) as i64))
                    }
                    (_, Ty::I32) => {
                        let x = self.int(a, from)?;
                        Val::I(Box::new(move |m| x(m) as i32 as i64))
                    }
                    // i32 values are kept sign-extended, booleans as 0 or 1, index and i64
                    // share their bits.
                    (_, Ty::Index | Ty::I64) => self.expr(a, from)?,
                }
            }
        })
    }
}

fn check_step(step: i64) -> Result<i64, KirError> {
    if step > 0 {
        Ok(step)
    } else {
        Err(KirError(format!("loop step {step} is not positive")))
    }
}

/// `arith.minimumf`: NaN if either is NaN, -0 below +0.
fn minimum(a: f32, b: f32) -> f32 {
    if a < b {
        a
    } else if b < a {
        b
    } else if a == b {
        if a.is_sign_negative() {
            a
        } else {
            b
        }
    } else {
        f32::NAN
    }
}

/// `arith.maximumf`: NaN if either is NaN, +0 above -0.
fn maximum(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else if b > a {
        b
    } else if a == b {
        if a.is_sign_positive() {
            a
        } else {
            b
        }
    } else {
        f32::NAN
    }
}

fn float_bin(op: BinOp, x: FloatFn, y: FloatFn) -> FloatFn {
    match op {
        BinOp::Add => Box::new(move |m| x(m) + y(m)),
        BinOp::Sub => Box::new(move |m| x(m) - y(m)),
        BinOp::Mul => Box::new(move |m| x(m) * y(m)),
        BinOp::Div => Box::new(move |m| x(m) / y(m)),
        BinOp::Min => Box::new(move |m| minimum(x(m), y(m))),
        BinOp::Max => Box::new(move |m| maximum(x(m), y(m))),
        _ => unreachable!("checked"),
    }
}

/// Normalises the 64-bit result of an operation on `t` (i32 values are sign-extended).
#[inline(always)]
fn wrap(t: Ty, v: i64) -> i64 {
    if t == Ty::I32 {
        v as i32 as i64
    } else {
        v
    }
}

fn bits(t: Ty) -> u32 {
    match t {
        Ty::I32 => 32,
        Ty::Bool => 1,
        _ => 64,
    }
}

/// `x op c` for the common operations with a constant; `None` where the general form is
/// needed.
fn int_bin_const(op: BinOp, t: Ty, x: IntFn, c: i64) -> Option<IntFn> {
    let c = match t {
        Ty::I32 => c as i32 as i64,
        Ty::Bool => (c != 0) as i64,
        _ => c,
    };
    Some(match (op, t) {
        (BinOp::Add, Ty::Index | Ty::I64) => Box::new(move |m| x(m).wrapping_add(c)),
        (BinOp::Sub, Ty::Index | Ty::I64) => Box::new(move |m| x(m).wrapping_sub(c)),
        (BinOp::Mul, Ty::Index | Ty::I64) => Box::new(move |m| x(m).wrapping_mul(c)),
        (BinOp::Div, Ty::Index) if c > 0 => Box::new(move |m| x(m) / c),
        (BinOp::Rem, Ty::Index) if c > 0 => Box::new(move |m| x(m) % c),
        (BinOp::Min, Ty::Index) => Box::new(move |m| x(m).min(c)),
        (BinOp::Max, Ty::Index) => Box::new(move |m| x(m).max(c)),
        _ => return None,
    })
}

fn int_bin(op: BinOp, t: Ty, x: IntFn, y: IntFn) -> IntFn {
    let unsigned = t == Ty::I64;
    let width = bits(t);
    match op {
        BinOp::Add => Box::new(move |m| wrap(t, x(m).wrapping_add(y(m)))),
        BinOp::Sub => Box::new(move |m| wrap(t, x(m).wrapping_sub(y(m)))),
        BinOp::Mul => Box::new(move |m| wrap(t, x(m).wrapping_mul(y(m)))),
        BinOp::Div | BinOp::Rem => {
            let rem = op == BinOp::Rem;
            Box::new(move |m| {
                let (a, b) = (x(m), y(m));
                if b == 0 {
                    m.fail("integer division by zero".into());
                    return 0;
                }
                let r = match (unsigned, rem) {
                    (true, false) => ((a as u64) / (b as u64)) as i64,
                    (true, true) => ((a as u64) % (b as u64)) as i64,
                    (false, false) => a.wrapping_div(b),
                    (false, true) => a.wrapping_rem(b),
                };
                wrap(t, r)
            })
        }
        BinOp::Min if unsigned => Box::new(move |m| (x(m) as u64).min(y(m) as u64) as i64),
        BinOp::Max if unsigned => Box::new(move |m| (x(m) as u64).max(y(m) as u64) as i64),
        BinOp::Min => Box::new(move |m| x(m).min(y(m))),
        BinOp::Max => Box::new(move |m| x(m).max(y(m))),
        BinOp::And => Box::new(move |m| x(m) & y(m)),
        BinOp::Or => Box::new(move |m| x(m) | y(m)),
        BinOp::Xor => Box::new(move |m| x(m) ^ y(m)),
        BinOp::Shl | BinOp::ShrU => {
            let left = op == BinOp::Shl;
            Box::new(move |m| {
                let (a, s) = (x(m), y(m));
                if s < 0 || s >= width as i64 {
                    m.fail(format!("shift by {s} of a {width}-bit value"));
                    return 0;
                }
                match (left, width) {
                    (true, 32) => ((a as u32) << s) as i32 as i64,
                    (false, 32) => ((a as u32) >> s) as i32 as i64,
                    (true, _) => ((a as u64) << s) as i64,
                    (false, _) => ((a as u64) >> s) as i64,
                }
            })
        }
    }
}

// ----- running -------------------------------------------------------------------------------

/// Runs `k` on a grid of `grid` blocks over the parameter buffers `params` (one per declared
/// parameter, of its element type and length). On an error the buffers hold what was
/// written before it.
pub fn run_kernel(k: &KernelFn, grid: u64, params: &mut [KirBuffer]) -> Result<(), KirError> {
    k.check()?;
    if k.block == 0 {
        return Err(KirError("a block of 0 threads".into()));
    }
    if params.len() != k.params.len() {
        return Err(KirError(format!(
            "{} buffers for {} parameters",
            params.len(),
            k.params.len()
        )));
    }
    let block = k.block as usize;
    // Storage: f32 parameters, then f32 shared and private arrays, in `fmem`; i32
    // parameters in `imem`; integer shared and private arrays in `lmem`.
    let mut arrays = Vec::new();
    let mut fmem: Vec<Vec<f32>> = Vec::new();
    let mut imem: Vec<Vec<i32>> = Vec::new();
    let mut lmem: Vec<Vec<i64>> = Vec::new();
    for (i, (decl, buf)) in k.params.iter().zip(params.iter_mut()).enumerate() {
        if buf.elem() != decl.elem || buf.len() as u64 != decl.len {
            return Err(KirError(format!(
                "parameter {i} is declared {} x {:?} but given {} x {:?}",
                decl.len,
                decl.elem,
                buf.len(),
                buf.elem()
            )));
        }
        let loc = match buf {
            KirBuffer::F32(_) => {
                fmem.push(Vec::new());
                Loc::F(fmem.len() - 1)
            }
            KirBuffer::I32(_) => {
                imem.push(Vec::new());
                Loc::I32(imem.len() - 1)
            }
        };
        arrays.push(ArrayInfo {
            loc,
            len: decl.len as i64,
            private: false,
            buf: Buf::Param(i),
        });
    }
    let fparams = fmem.len();
    let locals = k
        .shared
        .iter()
        .enumerate()
        .map(|(i, d)| (d, Buf::Shared(i), 1));
    let privates = k
        .private
        .iter()
        .enumerate()
        .map(|(i, d)| (d, Buf::Private(i), block));
    for (decl, buf, copies) in locals.chain(privates) {
        let size = decl.len as usize * copies;
        let loc = if decl.elem == Ty::F32 {
            fmem.push(vec![f32::NAN; size]);
            Loc::F(fmem.len() - 1)
        } else {
            lmem.push(vec![0; size]);
            Loc::L(lmem.len() - 1)
        };
        arrays.push(ArrayInfo {
            loc,
            len: decl.len as i64,
            private: matches!(buf, Buf::Private(_)),
            buf,
        });
    }
    let steps = fission(k)?;
    let compiler = Compiler {
        k,
        arrays,
        nparams: k.params.len(),
        nshared: k.shared.len(),
    };
    let program = compiler.steps(&steps)?;

    // Move the parameter buffers into the machine (and back afterwards).
    let (mut fi, mut ii) = (0, 0);
    for buf in params.iter_mut() {
        match buf {
            KirBuffer::F32(v) => {
                fmem[fi] = std::mem::take(v);
                fi += 1;
            }
            KirBuffer::I32(v) => {
                imem[ii] = std::mem::take(v);
                ii += 1;
            }
        }
    }
    let mut m = Machine {
        ints: vec![0; k.vars.len()],
        floats: vec![0.0; k.vars.len()],
        fmem,
        imem,
        lmem,
        tid: 0,
        bid: 0,
        err: None,
    };
    for bid in 0..grid {
        m.bid = bid as i64;
        m.tid = 0;
        for v in &mut m.fmem[fparams..] {
            v.fill(f32::NAN);
        }
        for v in &mut m.lmem {
            v.fill(0);
        }
        run_steps(&program, &mut m, block as i64);
        if m.err.is_some() {
            break;
        }
    }
    let (mut fi, mut ii) = (0, 0);
    for buf in params.iter_mut() {
        match buf {
            KirBuffer::F32(v) => {
                *v = std::mem::take(&mut m.fmem[fi]);
                fi += 1;
            }
            KirBuffer::I32(v) => {
                *v = std::mem::take(&mut m.imem[ii]);
                ii += 1;
            }
        }
    }
    match m.err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn run_steps(steps: &[XStep], m: &mut Machine, block: i64) {
    for s in steps {
        if m.err.is_some() {
            return;
        }
        match s {
            XStep::Uniform(f) => {
                m.tid = 0;
                f(m);
            }
            XStep::Threads(stmts) => {
                for tid in 0..block {
                    m.tid = tid;
                    for s in stmts {
                        s(m);
                    }
                    if m.err.is_some() {
                        return;
                    }
                }
            }
            XStep::For {
                var,
                lo,
                hi,
                step,
                body,
            } => {
                m.tid = 0;
                let (mut i, hi) = (lo(m), hi(m));
                while i < hi && m.err.is_none() {
                    m.ints[*var] = i;
                    run_steps(body, m, block);
                    i = i.saturating_add(*step);
                }
            }
            XStep::If {
                cond,
                then,
                otherwise,
            } => {
                m.tid = 0;
                if cond(m) != 0 {
                    run_steps(then, m, block);
                } else {
                    run_steps(otherwise, m, block);
                }
            }
        }
    }
}
