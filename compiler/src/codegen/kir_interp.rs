//! An interpreter of kernel IR: the oracle for kernel generators.
//!
//! [`run_kernel`] executes a [`CheckedKernel`] exactly as the GPU would: blocks run one after
//! the other, and the threads of a block run by *thread-loop fission* ([`split`]): each
//! barrier-free stretch of the body runs for thread 0, then thread 1, ..., so a `Barrier`
//! is the boundary between two stretches; an `Mma` is one too, and runs for every warp of
//! the block at once ([`super::semantics::mma_element`]). A `for`/`if` that contains a
//! barrier or an `Mma` is uniform
//! (the same for every thread, see [`super::check`]), so it runs once per block with its
//! body split the same way; a `Let` whose value cannot differ between threads is evaluated
//! once per block, before the stretch it appears in. The host printer
//! ([`super::mlir_text::host_module`]) uses the same fission, so the interpreter runs exactly the
//! code the host runs.
//!
//! Shared arrays are fresh for every block and private arrays fresh for every thread of every
//! block; both are filled with NaN (f32) or 0 (integers), so reading memory that was never
//! written shows up in the results. An asynchronous copy reads its source when it is issued
//! and lands in shared memory as late as the program allows: when an `AsyncWait` completes
//! its group (copies never waited for never land), so a missing wait or barrier shows up
//! as stale data. Out-of-bounds accesses, division by zero and oversized
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

use super::check::CheckedKernel;
use super::fission::{split, Step};
use super::kir::{AsyncCopy, BinOp, Buf, CmpOp, Expr, KirError, MmaShape, Stmt, Ty, UnOp, Var};
use super::semantics::{
    buf_elem, cast_source_ty, cast_steps, mma_element, operand_ty, round_bf16, round_tf32, ty_in,
    CastStep,
};

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

// ----- the machine --------------------------------------------------------------------------

/// Where an array lives in the machine: its storage class and slot.
#[derive(Clone, Copy, Debug)]
enum Storage {
    /// `fmem[slot]`.
    F(usize),
    /// `imem[slot]` (i32 parameters).
    I32(usize),
    /// `lmem[slot]` (integer and boolean shared or private arrays, as i64).
    L(usize),
}

#[derive(Clone, Copy, Debug)]
struct ArrayInfo {
    loc: Storage,
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
    /// Per thread: the asynchronous copies issued since its last commit, and its committed
    /// groups in flight, oldest first; each copy is (fmem slot, position, value).
    copies: Vec<(Vec<Copy>, std::collections::VecDeque<Vec<Copy>>)>,
}

type Copy = (usize, usize, f32);

impl Machine {
    /// Lands the thread's oldest groups until at most `in_flight` remain.
    fn wait_copies(&mut self, in_flight: usize) {
        let tid = self.tid as usize;
        while self.copies[tid].1.len() > in_flight {
            let group = self.copies[tid].1.pop_front().expect("a group in flight");
            for (slot, at, v) in group {
                self.fmem[slot][at] = v;
            }
        }
    }
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
    /// The fragments: `(fmem slot, private length, first element)` of A, B and C.
    Mma {
        shape: MmaShape,
        frags: [(usize, usize, usize); 3],
    },
}

struct Compiler<'k> {
    k: &'k CheckedKernel,
    arrays: Vec<ArrayInfo>,
    nparams: usize,
    nshared: usize,
}

impl Compiler<'_> {
    /// The machine array of a buffer (the checker guarantees it is declared).
    fn array(&self, buf: Buf) -> ArrayInfo {
        let i = match buf {
            Buf::Param(i) => i,
            Buf::Shared(i) => self.nparams + i,
            Buf::Private(i) => self.nparams + self.nshared + i,
        };
        self.arrays[i]
    }

    fn steps(&self, steps: &[Step<'_>]) -> Vec<XStep> {
        steps
            .iter()
            .map(|s| match s {
                Step::Uniform(v, e) => XStep::Uniform(self.let_(*v, e)),
                Step::Threads(stmts) => {
                    XStep::Threads(stmts.iter().map(|s| self.stmt(s)).collect())
                }
                Step::Mma(mma) => {
                    let frag = |(buf, at): (Buf, u64)| {
                        let a = self.array(buf);
                        match a.loc {
                            Storage::F(slot) => (slot, a.len as usize, at as usize),
                            _ => unreachable!("checked: mma fragments are private f32 arrays"),
                        }
                    };
                    XStep::Mma {
                        shape: mma.shape,
                        frags: [frag(mma.a), frag(mma.b), frag(mma.acc)],
                    }
                }
                Step::For {
                    var,
                    lo,
                    hi,
                    step,
                    body,
                } => XStep::For {
                    var: var.0 as usize,
                    lo: self.int(lo, Ty::Index),
                    hi: self.int(hi, Ty::Index),
                    step: *step,
                    body: self.steps(body),
                },
                Step::If {
                    cond,
                    then,
                    otherwise,
                } => XStep::If {
                    cond: self.int(cond, Ty::Bool),
                    then: self.steps(then),
                    otherwise: self.steps(otherwise),
                },
            })
            .collect()
    }

    fn let_(&self, v: Var, e: &Expr) -> StmtFn {
        let i = v.0 as usize;
        match self.expr(e, self.k.vars[i]) {
            Val::I(f) => Box::new(move |m| {
                let x = f(m);
                m.ints[i] = x;
            }),
            Val::F(f) => Box::new(move |m| {
                let x = f(m);
                m.floats[i] = x;
            }),
        }
    }

    fn block(&self, stmts: &[Stmt]) -> Vec<StmtFn> {
        stmts.iter().map(|s| self.stmt(s)).collect()
    }

    fn stmt(&self, s: &Stmt) -> StmtFn {
        match s {
            Stmt::Let(v, e) => self.let_(*v, e),
            Stmt::Store(buf, i, v) => self.store(*buf, i, v),
            Stmt::For(l) => {
                let v = l.var.0 as usize;
                let lo = self.int(&l.lo, Ty::Index);
                let hi = self.int(&l.hi, Ty::Index);
                let step = l.step;
                let body = self.block(&l.body);
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
                let cond = self.int(cond, Ty::Bool);
                let then = self.block(then);
                let otherwise = self.block(otherwise);
                Box::new(move |m| {
                    let body = if cond(m) != 0 { &then } else { &otherwise };
                    for s in body {
                        s(m);
                    }
                })
            }
            Stmt::AsyncCopy(copy) => self.async_copy(copy),
            Stmt::AsyncCommit => Box::new(|m| {
                let tid = m.tid as usize;
                let group = std::mem::take(&mut m.copies[tid].0);
                m.copies[tid].1.push_back(group);
            }),
            Stmt::AsyncWait(n) => {
                let n = *n as usize;
                Box::new(move |m| m.wait_copies(n))
            }
            // Stretches hold no barriers or mmas (fission splits at them).
            Stmt::Barrier | Stmt::Mma(_) => {
                unreachable!("a barrier or mma inside a stretch")
            }
        }
    }

    /// Reads the source now (only where the copy is not a zero fill) and queues the values;
    /// a wide copy at subscripts that are not multiples of its width is an error (the
    /// hardware would fault).
    fn async_copy(&self, copy: &AsyncCopy) -> StmtFn {
        let (dst, src) = (self.array(copy.dst.0), self.array(copy.src.0));
        let (Storage::F(dst_slot), Storage::F(src_slot)) = (dst.loc, src.loc) else {
            unreachable!("checked: async copies are between f32 arrays")
        };
        let (di, si) = (
            self.int(&copy.dst.1, Ty::Index),
            self.int(&copy.src.1, Ty::Index),
        );
        let ok = self.int(&copy.ok, Ty::Bool);
        let width = i64::from(copy.width);
        Box::new(move |m| {
            let (d, s, ok) = (di(m), si(m), ok(m) != 0);
            if d % width != 0 || (ok && s % width != 0) {
                m.fail(format!(
                    "a {}-byte async copy from element {s} to element {d}: not aligned",
                    4 * width
                ));
                return;
            }
            for i in 0..width {
                let value = match ok {
                    true => match m.at("async copy from", &src, s + i) {
                        Some(p) => m.fmem[src_slot][p],
                        None => return,
                    },
                    false => 0.0,
                };
                if let Some(p) = m.at("async copy to", &dst, d + i) {
                    let tid = m.tid as usize;
                    m.copies[tid].0.push((dst_slot, p, value));
                }
            }
        })
    }

    fn store(&self, buf: Buf, i: &Expr, v: &Expr) -> StmtFn {
        let a = self.array(buf);
        let ix = self.int(i, Ty::Index);
        match a.loc {
            Storage::F(slot) => {
                let val = self.float(v);
                Box::new(move |m| {
                    let i = ix(m);
                    let x = val(m);
                    if let Some(p) = m.at("store to", &a, i) {
                        m.fmem[slot][p] = x;
                    }
                })
            }
            Storage::I32(slot) => {
                let val = self.int(v, Ty::I32);
                Box::new(move |m| {
                    let i = ix(m);
                    let x = val(m);
                    if let Some(p) = m.at("store to", &a, i) {
                        m.imem[slot][p] = x as i32;
                    }
                })
            }
            Storage::L(slot) => {
                let elem = buf_elem(self.k, buf).expect("a declared buffer");
                let val = self.int(v, elem);
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

    /// `e` as an integer (the checker guarantees it is one where `want` is needed).
    fn int(&self, e: &Expr, want: Ty) -> IntFn {
        match self.expr(e, want) {
            Val::I(f) => f,
            Val::F(_) => unreachable!("an f32 where {want:?} is needed"),
        }
    }

    fn float(&self, e: &Expr) -> FloatFn {
        match self.expr(e, Ty::F32) {
            Val::F(f) => f,
            Val::I(_) => unreachable!("an integer where f32 is needed"),
        }
    }

    fn expr(&self, e: &Expr, want: Ty) -> Val {
        let t = ty_in(self.k, e, want);
        match e {
            Expr::Int(v) => int_literal(*v, t),
            Expr::F32(v) => {
                let v = *v;
                Val::F(Box::new(move |_| v))
            }
            Expr::Var(v) => {
                let i = v.0 as usize;
                if t == Ty::F32 {
                    Val::F(Box::new(move |m| m.floats[i]))
                } else {
                    Val::I(Box::new(move |m| m.ints[i]))
                }
            }
            Expr::ThreadId => Val::I(Box::new(|m| m.tid)),
            Expr::BlockId => Val::I(Box::new(|m| m.bid)),
            Expr::Bin(op, a, b) => self.bin(*op, a, b, t),
            Expr::Cmp(op, a, b) => self.cmp(*op, a, b),
            Expr::Select(c, a, b) => self.select(c, a, b, t),
            Expr::Load(buf, i) => self.load(*buf, i),
            Expr::Unary(op, a) => self.unary(*op, a, t),
            Expr::Cast(to, a) => {
                let from = cast_source_ty(self.k, a);
                cast_steps(from, *to)
                    .into_iter()
                    .fold(self.expr(a, from), cast_val)
            }
        }
    }

    fn bin(&self, op: BinOp, a: &Expr, b: &Expr, t: Ty) -> Val {
        if t == Ty::F32 {
            return Val::F(float_bin(op, self.float(a), self.float(b)));
        }
        // A literal right operand is the common case (offsets, strides).
        if let Expr::Int(c) = *b {
            if let Some(f) = int_bin_const(op, t, self.int(a, t), c) {
                return Val::I(f);
            }
        }
        Val::I(int_bin(op, t, self.int(a, t), self.int(b, t)))
    }

    fn cmp(&self, op: CmpOp, a: &Expr, b: &Expr) -> Val {
        let ot = operand_ty(self.k, a, b);
        if ot == Ty::F32 {
            let (x, y) = (self.float(a), self.float(b));
            return Val::I(match op {
                CmpOp::Lt => Box::new(move |m| (x(m) < y(m)) as i64),
                CmpOp::Le => Box::new(move |m| (x(m) <= y(m)) as i64),
                CmpOp::Gt => Box::new(move |m| (x(m) > y(m)) as i64),
                CmpOp::Ge => Box::new(move |m| (x(m) >= y(m)) as i64),
                CmpOp::Eq => Box::new(move |m| (x(m) == y(m)) as i64),
                CmpOp::Ne => Box::new(move |m| (x(m) != y(m)) as i64),
            });
        }
        let (x, y) = (self.int(a, ot), self.int(b, ot));
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

    fn select(&self, c: &Expr, a: &Expr, b: &Expr, t: Ty) -> Val {
        let c = self.int(c, Ty::Bool);
        // Both sides are evaluated, as on the GPU.
        if t == Ty::F32 {
            let (x, y) = (self.float(a), self.float(b));
            Val::F(Box::new(move |m| {
                let (c, x, y) = (c(m), x(m), y(m));
                if c != 0 {
                    x
                } else {
                    y
                }
            }))
        } else {
            let (x, y) = (self.int(a, t), self.int(b, t));
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

    fn load(&self, buf: Buf, i: &Expr) -> Val {
        let a = self.array(buf);
        let ix = self.int(i, Ty::Index);
        match a.loc {
            Storage::F(slot) => Val::F(Box::new(move |m| {
                let i = ix(m);
                match m.at("load from", &a, i) {
                    Some(p) => m.fmem[slot][p],
                    None => 0.0,
                }
            })),
            Storage::I32(slot) => Val::I(Box::new(move |m| {
                let i = ix(m);
                match m.at("load from", &a, i) {
                    Some(p) => m.imem[slot][p] as i64,
                    None => 0,
                }
            })),
            Storage::L(slot) => Val::I(Box::new(move |m| {
                let i = ix(m);
                match m.at("load from", &a, i) {
                    Some(p) => m.lmem[slot][p],
                    None => 0,
                }
            })),
        }
    }

    fn unary(&self, op: UnOp, a: &Expr, t: Ty) -> Val {
        if t == Ty::F32 {
            let x = self.float(a);
            return Val::F(match op {
                UnOp::Neg => Box::new(move |m| -x(m)),
                UnOp::Exp => Box::new(move |m| x(m).exp()),
                UnOp::Log => Box::new(move |m| x(m).ln()),
                UnOp::Sqrt => Box::new(move |m| x(m).sqrt()),
                UnOp::RoundTf32 => Box::new(move |m| round_tf32(x(m))),
                UnOp::RoundBf16 => Box::new(move |m| round_bf16(x(m))),
                UnOp::Not => unreachable!("checked: not of f32"),
            });
        }
        let x = self.int(a, t);
        Val::I(match (op, t) {
            (UnOp::Neg, Ty::I32) => Box::new(move |m| (x(m) as i32).wrapping_neg() as i64),
            (UnOp::Neg, _) => Box::new(move |m| x(m).wrapping_neg()),
            (UnOp::Not, Ty::Bool) => Box::new(move |m| x(m) ^ 1),
            (UnOp::Not, _) => Box::new(move |m| !x(m)),
            (UnOp::Exp | UnOp::Log | UnOp::Sqrt | UnOp::RoundTf32 | UnOp::RoundBf16, _) => {
                unreachable!("checked: {op:?} of {t:?}")
            }
        })
    }
}

/// An integer literal as a value of type `t`.
fn int_literal(v: i64, t: Ty) -> Val {
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

/// One primitive conversion of a compiled value ([`CastStep`]); conversions between
/// integer types that keep the held bits compile to nothing.
fn cast_val(x: Val, step: CastStep) -> Val {
    match (x, step.to == Ty::F32) {
        (Val::F(x), false) => Val::I(Box::new(move |m| step.float_to_int(x(m)))),
        (Val::I(x), true) => Val::F(Box::new(move |m| step.int_to_float(x(m)))),
        (Val::I(x), false) if step.keeps_int() => Val::I(x),
        (Val::I(x), false) => Val::I(Box::new(move |m| step.int_to_int(x(m)))),
        (Val::F(_), true) => unreachable!("no conversion from f32 to f32"),
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
pub fn run_kernel(k: &CheckedKernel, grid: u64, params: &mut [KirBuffer]) -> Result<(), KirError> {
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
                Storage::F(fmem.len() - 1)
            }
            KirBuffer::I32(_) => {
                imem.push(Vec::new());
                Storage::I32(imem.len() - 1)
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
            Storage::F(fmem.len() - 1)
        } else {
            lmem.push(vec![0; size]);
            Storage::L(lmem.len() - 1)
        };
        arrays.push(ArrayInfo {
            loc,
            len: decl.len as i64,
            private: matches!(buf, Buf::Private(_)),
            buf,
        });
    }
    let loops = split(k).expect("a checked kernel splits (checked in KernelFn::into_checked)");
    let compiler = Compiler {
        k,
        arrays,
        nparams: k.params.len(),
        nshared: k.shared.len(),
    };
    let program = compiler.steps(loops.steps());

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
        copies: vec![Default::default(); block],
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
        m.copies.iter_mut().for_each(|c| *c = Default::default());
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
            XStep::Mma { shape, frags } => run_mma(*shape, frags, m, block as usize),
        }
    }
}

/// Every warp's `D = A B + C` ([`mma_element`]), C replaced in place (the checker keeps it
/// apart from A and B).
fn run_mma(shape: MmaShape, frags: &[(usize, usize, usize); 3], m: &mut Machine, block: usize) {
    let [(sa, la, aa), (sb, lb, ab), (sc, lc, ac)] = *frags;
    let [_, _, c_len] = shape.fragment_lens();
    for warp in (0..block).step_by(32) {
        for lane in 0..32 {
            for j in 0..c_len {
                let at = (warp + lane) * lc + ac + j as usize;
                let fmem = &m.fmem;
                let read = |slot: usize, len: usize, first: usize| {
                    move |l: u64, i: u64| fmem[slot][(warp + l as usize) * len + first + i as usize]
                };
                let d = mma_element(
                    shape,
                    lane as u64,
                    j,
                    fmem[sc][at],
                    read(sa, la, aa),
                    read(sb, lb, ab),
                );
                m.fmem[sc][at] = d;
            }
        }
    }
}
