//! Kernel IR: one GPU-style kernel as structured code over flat buffers.
//!
//! A kernel runs as a 1-D grid of blocks of `block` threads. Its body is statements over
//! typed expressions: `ThreadId` and `BlockId`, loads and stores of *parameters* (global
//! buffers, one pointer each), *shared* arrays (one per block) and *private* arrays (one per
//! thread: register tiles and mutable accumulators), structured `for` and `if`,
//! `Barrier`, which synchronises the threads of a block, `Mma`, a warp's tensor-core
//! matrix multiply-accumulate over fragments in private arrays ([`Mma`]), and asynchronous
//! copies from a parameter to a shared array ([`AsyncCopy`], completed in groups by
//! `AsyncCommit` and `AsyncWait`).
//!
//! This module holds the IR and [`KernelBuilder`]. The stages after it: [`KernelFn::check`]
//! ([`super::check`]) makes a [`super::check::CheckedKernel`]; the GPU printer
//! ([`super::mlir_text::gpu_module`]) walks it as is, thread-loop fission
//! ([`super::fission`]) splits it at its barriers for the host printer
//! ([`super::mlir_text::host_module`]) and the interpreter ([`super::kir_interp`]), so the
//! host executes exactly the code the GPU runs. What the operations mean is in
//! [`super::semantics`].

use std::fmt;

/// Scalar types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ty {
    /// Sizes and subscripts (`index` in MLIR, 64-bit).
    Index,
    /// 64-bit integers with wrapping unsigned arithmetic (random numbers).
    I64,
    I32,
    F32,
    Bool,
}

impl Ty {
    pub fn mlir(self) -> &'static str {
        match self {
            Ty::Index => "index",
            Ty::I64 => "i64",
            Ty::I32 => "i32",
            Ty::F32 => "f32",
            Ty::Bool => "i1",
        }
    }
    pub fn is_float(self) -> bool {
        self == Ty::F32
    }
}

/// A variable: bound by `Let` or by a loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Var(pub u32);

/// A buffer a kernel reads or writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Buf {
    /// The i-th pointer parameter (a global buffer).
    Param(usize),
    /// The i-th shared array of the block.
    Shared(usize),
    /// The i-th private array of the thread.
    Private(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    /// Signed division (integers, truncating) or float division.
    Div,
    /// Signed remainder (integers only).
    Rem,
    Min,
    Max,
    /// Bitwise (integers) or logical (booleans).
    And,
    Or,
    Xor,
    Shl,
    /// Logical shift right.
    ShrU,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Not,
    /// f32 rounded to TF32 (10 mantissa bits, to nearest with ties away from zero, as
    /// `cvt.rna.tf32.f32`); the low 13 bits of the result are zero.
    RoundTf32,
    /// f32 rounded to BF16 (7 mantissa bits, to nearest with ties to even, as
    /// `cvt.rn.bf16.f32`), still an f32; the low 16 bits of the result are zero.
    RoundBf16,
}

/// An expression; integer literals take the type their context needs (index by default).
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Int(i64),
    F32(f32),
    Var(Var),
    ThreadId,
    BlockId,
    Bin(BinOp, Box<Expr>, Box<Expr>),
    Cmp(CmpOp, Box<Expr>, Box<Expr>),
    Select(Box<Expr>, Box<Expr>, Box<Expr>),
    Load(Buf, Box<Expr>),
    Unary(UnOp, Box<Expr>),
    /// Conversion: between integer types (sign-extending from i32), integer to f32 (index
    /// and i32 signed, i64 unsigned).
    Cast(Ty, Box<Expr>),
}

impl Expr {
    /// The operand expressions, in order.
    pub fn children(&self) -> impl Iterator<Item = &Expr> {
        let (a, b, c) = match self {
            Expr::Int(_) | Expr::F32(_) | Expr::Var(_) | Expr::ThreadId | Expr::BlockId => {
                (None, None, None)
            }
            Expr::Load(_, a) | Expr::Unary(_, a) | Expr::Cast(_, a) => (Some(&**a), None, None),
            Expr::Bin(_, a, b) | Expr::Cmp(_, a, b) => (Some(&**a), Some(&**b), None),
            Expr::Select(c, a, b) => (Some(&**c), Some(&**a), Some(&**b)),
        };
        [a, b, c].into_iter().flatten()
    }

    /// Whether `pred` holds for this expression or any expression inside it.
    pub fn any(&self, pred: &mut impl FnMut(&Expr) -> bool) -> bool {
        pred(self) || self.children().any(|c| c.any(pred))
    }

    /// Calls `f` on this expression and every expression inside it, outermost first.
    pub fn visit(&self, f: &mut impl FnMut(&Expr)) {
        f(self);
        self.children().for_each(|c| c.visit(f));
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    Let(Var, Expr),
    Store(Buf, Expr, Expr),
    For(Loop),
    If {
        cond: Expr,
        then: Vec<Stmt>,
        otherwise: Vec<Stmt>,
    },
    Barrier,
    Mma(Mma),
    /// Starts copying 1 or 4 elements (`cp.async`): they land in shared memory at some
    /// point before the `AsyncWait` that completes their group.
    AsyncCopy(AsyncCopy),
    /// Closes the thread's group of the copies started since the last commit.
    AsyncCommit,
    /// Waits until at most this many of the thread's committed groups are still in flight
    /// (the older ones have landed; other threads see them after the next `Barrier`).
    AsyncWait(u32),
}

/// `shared[dst + i] = ok ? param[src + i] : 0` for `i < width`, asynchronously (`cp.async`
/// of 4 or 16 bytes, the zeros a zero-filling copy of 0 source bytes); `src .. src + width`
/// must be valid subscripts where `ok` is false too (use 0: the host code reads them). A
/// copy of 4 elements (16 bytes) needs both subscripts to be multiples of 4 (the arrays
/// start 16-byte aligned).
#[derive(Clone, Debug, PartialEq)]
pub struct AsyncCopy {
    pub dst: (Buf, Expr),
    pub src: (Buf, Expr),
    pub ok: Expr,
    /// Elements copied: 1 or 4.
    pub width: u32,
}

/// The tensor-core operations a kernel can issue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MmaShape {
    /// `mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32`: a 16 x 8 tile of `D = A B + C`
    /// with `K = 8`, f32 operands read as TF32 (their low 13 bits ignored), f32
    /// accumulation.
    Tf32M16N8K8,
    /// `mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32`: `K = 16`, BF16 operands (each
    /// fragment element an f32 whose low 16 bits are ignored; two of them travel in one
    /// register), f32 accumulation.
    Bf16M16N8K16,
}

impl MmaShape {
    /// `(M, N, K)` of one operation.
    pub fn mnk(self) -> (u64, u64, u64) {
        match self {
            MmaShape::Tf32M16N8K8 => (16, 8, 8),
            MmaShape::Bf16M16N8K16 => (16, 8, 16),
        }
    }

    /// Elements of A, B and C (= D) that each thread of the warp holds.
    pub fn fragment_lens(self) -> [u64; 3] {
        let (m, n, k) = self.mnk();
        [m * k / 32, k * n / 32, m * n / 32]
    }
}

/// A warp-level matrix multiply-accumulate: the 32 threads of each warp (threads
/// `32w .. 32w + 32` of the block) together compute `D = A B + C` for one tile, each thread
/// holding its fragments, in the layouts of [`super::semantics::mma_a_element`] and its
/// siblings, in private f32 arrays: A at `a.1 ..`, B at `b.1 ..`, C at `acc.1 ..`, where
/// D replaces C. Like a barrier it is executed by every thread of the block at once
/// (uniform control flow, a block of whole warps); unlike a barrier it orders no memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mma {
    pub shape: MmaShape,
    pub a: (Buf, u64),
    pub b: (Buf, u64),
    pub acc: (Buf, u64),
}

/// `for var in (lo..hi).step_by(step) { body }`, index-typed. `vectorize` asks the host
/// code's compiler to vectorise the loop by 8 whatever its cost model thinks (LLVM's
/// `llvm.loop.vectorize.enable` and `.width`): for loops whose iterations are
/// independent and whose strided loads the cost model overrates; it changes no result
/// (a loop LLVM cannot vectorise stays scalar) and means nothing on a GPU.
#[derive(Clone, Debug, PartialEq)]
pub struct Loop {
    pub var: Var,
    pub lo: Expr,
    pub hi: Expr,
    pub step: i64,
    pub vectorize: bool,
    pub body: Vec<Stmt>,
}

/// A declared array: element type and length in elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ArrayDecl {
    pub elem: Ty,
    pub len: u64,
}

/// One kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelFn {
    /// What it computes, e.g. `conv2d+add+relu` (the stem of its name).
    pub ops: String,
    /// How it computes it, where there is a choice worth showing (a GEMM's tile, e.g.
    /// `tile 128x128x16 (tf32 mma, 2 stages); cp.async: W 16 B, X 4 B`); else empty.
    pub schedule: String,
    pub block: u32,
    pub params: Vec<ArrayDecl>,
    pub shared: Vec<ArrayDecl>,
    pub private: Vec<ArrayDecl>,
    /// The type of every variable, by number.
    pub vars: Vec<Ty>,
    pub body: Vec<Stmt>,
}

// ----- expression construction -------------------------------------------------------

impl Expr {
    pub fn int(v: i64) -> Expr {
        Expr::Int(v)
    }
    pub fn f32(v: f32) -> Expr {
        Expr::F32(v)
    }
    fn bin(op: BinOp, a: Expr, b: Expr) -> Expr {
        Expr::Bin(op, Box::new(a), Box::new(b))
    }
    fn cmp(op: CmpOp, a: Expr, b: impl Into<Expr>) -> Expr {
        Expr::Cmp(op, Box::new(a), Box::new(b.into()))
    }
    pub fn lt(self, b: impl Into<Expr>) -> Expr {
        Expr::cmp(CmpOp::Lt, self, b)
    }
    pub fn le(self, b: impl Into<Expr>) -> Expr {
        Expr::cmp(CmpOp::Le, self, b)
    }
    pub fn gt(self, b: impl Into<Expr>) -> Expr {
        Expr::cmp(CmpOp::Gt, self, b)
    }
    pub fn ge(self, b: impl Into<Expr>) -> Expr {
        Expr::cmp(CmpOp::Ge, self, b)
    }
    pub fn eq(self, b: impl Into<Expr>) -> Expr {
        Expr::cmp(CmpOp::Eq, self, b)
    }
    pub fn ne(self, b: impl Into<Expr>) -> Expr {
        Expr::cmp(CmpOp::Ne, self, b)
    }
    pub fn and(self, b: Expr) -> Expr {
        Expr::bin(BinOp::And, self, b)
    }
    pub fn or(self, b: Expr) -> Expr {
        Expr::bin(BinOp::Or, self, b)
    }
    pub fn xor(self, b: impl Into<Expr>) -> Expr {
        Expr::bin(BinOp::Xor, self, b.into())
    }
    pub fn shift_left(self, b: impl Into<Expr>) -> Expr {
        Expr::bin(BinOp::Shl, self, b.into())
    }
    pub fn shift_right(self, b: impl Into<Expr>) -> Expr {
        Expr::bin(BinOp::ShrU, self, b.into())
    }
    pub fn min(self, b: impl Into<Expr>) -> Expr {
        Expr::bin(BinOp::Min, self, b.into())
    }
    pub fn max(self, b: impl Into<Expr>) -> Expr {
        Expr::bin(BinOp::Max, self, b.into())
    }
    pub fn logical_not(self) -> Expr {
        Expr::Unary(UnOp::Not, Box::new(self))
    }
    pub fn exp(self) -> Expr {
        Expr::Unary(UnOp::Exp, Box::new(self))
    }
    pub fn log(self) -> Expr {
        Expr::Unary(UnOp::Log, Box::new(self))
    }
    pub fn sqrt(self) -> Expr {
        Expr::Unary(UnOp::Sqrt, Box::new(self))
    }
    pub fn round_tf32(self) -> Expr {
        Expr::Unary(UnOp::RoundTf32, Box::new(self))
    }
    pub fn round_bf16(self) -> Expr {
        Expr::Unary(UnOp::RoundBf16, Box::new(self))
    }
    pub fn cast(self, ty: Ty) -> Expr {
        Expr::Cast(ty, Box::new(self))
    }
    /// `cond ? a : b` (both sides are evaluated: guard loads with [`Expr::clamp_index`]).
    pub fn select(cond: Expr, a: impl Into<Expr>, b: impl Into<Expr>) -> Expr {
        Expr::Select(Box::new(cond), Box::new(a.into()), Box::new(b.into()))
    }
    pub fn load(buf: Buf, index: impl Into<Expr>) -> Expr {
        Expr::Load(buf, Box::new(index.into()))
    }
    /// A load that reads `default` where `ok` is false, without touching memory at a bad
    /// index (the subscript is replaced by 0 there).
    pub fn load_if(buf: Buf, ok: Expr, index: Expr, default: impl Into<Expr>) -> Expr {
        let safe = Expr::select(ok.clone(), index, Expr::Int(0));
        Expr::select(ok, Expr::load(buf, safe), default)
    }
}

impl From<i64> for Expr {
    fn from(v: i64) -> Expr {
        Expr::Int(v)
    }
}

impl From<i32> for Expr {
    fn from(v: i32) -> Expr {
        Expr::Int(v as i64)
    }
}

impl From<usize> for Expr {
    fn from(v: usize) -> Expr {
        Expr::Int(v as i64)
    }
}

impl From<u32> for Expr {
    fn from(v: u32) -> Expr {
        Expr::Int(v as i64)
    }
}

impl From<u64> for Expr {
    fn from(v: u64) -> Expr {
        Expr::Int(v as i64)
    }
}

impl From<f32> for Expr {
    fn from(v: f32) -> Expr {
        Expr::F32(v)
    }
}

impl From<Var> for Expr {
    fn from(v: Var) -> Expr {
        Expr::Var(v)
    }
}

macro_rules! arith_ops {
    ($($trait:ident $method:ident $op:ident),*) => {$(
        impl<R: Into<Expr>> std::ops::$trait<R> for Expr {
            type Output = Expr;
            fn $method(self, rhs: R) -> Expr {
                Expr::bin(BinOp::$op, self, rhs.into())
            }
        }
    )*};
}
arith_ops!(Add add Add, Sub sub Sub, Mul mul Mul, Div div Div, Rem rem Rem);

impl std::ops::Neg for Expr {
    type Output = Expr;
    fn neg(self) -> Expr {
        Expr::Unary(UnOp::Neg, Box::new(self))
    }
}

// ----- building kernels ----------------------------------------------------------------

/// Builds a [`KernelFn`] statement by statement; nested bodies are built by closures.
pub struct KernelBuilder {
    kernel: KernelFn,
    stack: Vec<Vec<Stmt>>,
    open: Vec<Open>,
}

/// A construct whose body is being built.
enum Open {
    For {
        var: Var,
        lo: Expr,
        hi: Expr,
        step: i64,
        vectorize: bool,
    },
    Then {
        cond: Expr,
    },
    Else {
        cond: Expr,
        then: Vec<Stmt>,
    },
}

impl KernelBuilder {
    pub fn new(ops: impl Into<String>, block: u32) -> Self {
        KernelBuilder {
            kernel: KernelFn {
                ops: ops.into(),
                schedule: String::new(),
                block,
                params: Vec::new(),
                shared: Vec::new(),
                private: Vec::new(),
                vars: Vec::new(),
                body: Vec::new(),
            },
            stack: vec![Vec::new()],
            open: Vec::new(),
        }
    }

    pub fn block(&self) -> u32 {
        self.kernel.block
    }

    /// Changes the threads per block, before any statement reads `ThreadId` or `BlockId`.
    pub fn set_block(&mut self, block: u32) {
        self.kernel.block = block;
    }

    pub fn param(&mut self, elem: Ty, len: u64) -> Buf {
        self.kernel.params.push(ArrayDecl { elem, len });
        Buf::Param(self.kernel.params.len() - 1)
    }

    pub fn shared(&mut self, elem: Ty, len: u64) -> Buf {
        self.kernel.shared.push(ArrayDecl { elem, len });
        Buf::Shared(self.kernel.shared.len() - 1)
    }

    pub fn private(&mut self, elem: Ty, len: u64) -> Buf {
        self.kernel.private.push(ArrayDecl { elem, len });
        Buf::Private(self.kernel.private.len() - 1)
    }

    fn new_var(&mut self, ty: Ty) -> Var {
        self.kernel.vars.push(ty);
        Var(self.kernel.vars.len() as u32 - 1)
    }

    fn push(&mut self, stmt: Stmt) {
        self.stack.last_mut().expect("open body").push(stmt);
    }

    /// The type of an expression (integer literals alone are index).
    pub fn ty(&self, e: &Expr) -> Ty {
        super::semantics::type_of(&self.kernel, e).unwrap_or(Ty::Index)
    }

    /// Binds `e` to a new variable and returns it as an expression.
    pub fn let_(&mut self, e: impl Into<Expr>) -> Expr {
        let e = e.into();
        if matches!(e, Expr::Int(_) | Expr::F32(_) | Expr::Var(_)) {
            return e;
        }
        let var = self.new_var(self.ty(&e));
        self.push(Stmt::Let(var, e));
        Expr::Var(var)
    }

    pub fn store(&mut self, buf: Buf, index: impl Into<Expr>, value: impl Into<Expr>) {
        self.push(Stmt::Store(buf, index.into(), value.into()));
    }

    pub fn barrier(&mut self) {
        self.push(Stmt::Barrier);
    }

    pub fn mma(&mut self, mma: Mma) {
        self.push(Stmt::Mma(mma));
    }

    pub fn async_copy(&mut self, dst: (Buf, Expr), src: (Buf, Expr), ok: Expr, width: u32) {
        self.push(Stmt::AsyncCopy(AsyncCopy {
            dst,
            src,
            ok,
            width,
        }));
    }

    pub fn async_commit(&mut self) {
        self.push(Stmt::AsyncCommit);
    }

    pub fn async_wait(&mut self, in_flight: u32) {
        self.push(Stmt::AsyncWait(in_flight));
    }

    /// `for i in (lo..hi).step_by(step) { body(i) }`.
    pub fn for_(
        &mut self,
        lo: impl Into<Expr>,
        hi: impl Into<Expr>,
        step: i64,
        body: impl FnOnce(&mut Self, Expr),
    ) {
        let i = self.begin_for(lo, hi, step);
        body(self, i);
        self.end_for();
    }

    pub fn if_(&mut self, cond: Expr, then: impl FnOnce(&mut Self)) {
        self.begin_if(cond);
        then(self);
        self.end_if();
    }

    pub fn if_else(
        &mut self,
        cond: Expr,
        then: impl FnOnce(&mut Self),
        otherwise: impl FnOnce(&mut Self),
    ) {
        self.begin_if(cond);
        then(self);
        self.begin_else();
        otherwise(self);
        self.end_if();
    }

    /// Opens a loop (closed by [`Self::end_for`]) and returns its variable.
    pub fn begin_for(&mut self, lo: impl Into<Expr>, hi: impl Into<Expr>, step: i64) -> Expr {
        self.open_for(lo.into(), hi.into(), step, false)
    }

    /// [`Self::begin_for`] with step 1 and the host compiler asked to vectorise it (see
    /// [`Loop::vectorize`]).
    pub fn begin_vectorized_for(&mut self, lo: impl Into<Expr>, hi: impl Into<Expr>) -> Expr {
        self.open_for(lo.into(), hi.into(), 1, true)
    }

    fn open_for(&mut self, lo: Expr, hi: Expr, step: i64, vectorize: bool) -> Expr {
        let var = self.new_var(Ty::Index);
        self.open.push(Open::For {
            var,
            lo,
            hi,
            step,
            vectorize,
        });
        self.stack.push(Vec::new());
        Expr::Var(var)
    }

    pub fn end_for(&mut self) {
        let body = self.stack.pop().expect("loop body");
        match self.open.pop() {
            Some(Open::For {
                var,
                lo,
                hi,
                step,
                vectorize,
            }) => self.push(Stmt::For(Loop {
                var,
                lo,
                hi,
                step,
                vectorize,
                body,
            })),
            _ => panic!("end_for without begin_for"),
        }
    }

    /// Opens a conditional (closed by [`Self::end_if`], optionally split by
    /// [`Self::begin_else`]).
    pub fn begin_if(&mut self, cond: Expr) {
        self.open.push(Open::Then { cond });
        self.stack.push(Vec::new());
    }

    pub fn begin_else(&mut self) {
        let then = self.stack.pop().expect("then body");
        match self.open.pop() {
            Some(Open::Then { cond }) => self.open.push(Open::Else { cond, then }),
            _ => panic!("begin_else without begin_if"),
        }
        self.stack.push(Vec::new());
    }

    pub fn end_if(&mut self) {
        let body = self.stack.pop().expect("if body");
        let stmt = match self.open.pop() {
            Some(Open::Then { cond }) => Stmt::If {
                cond,
                then: body,
                otherwise: Vec::new(),
            },
            Some(Open::Else { cond, then }) => Stmt::If {
                cond,
                then,
                otherwise: body,
            },
            _ => panic!("end_if without begin_if"),
        };
        self.push(stmt);
    }

    /// How many bodies are open (1 at the top level).
    pub fn depth(&self) -> usize {
        self.stack.len()
    }

    /// Records how the kernel computes ([`KernelFn::schedule`]).
    pub fn set_schedule(&mut self, schedule: impl Into<String>) {
        self.kernel.schedule = schedule.into();
    }

    pub fn finish(mut self) -> KernelFn {
        assert_eq!(self.stack.len(), 1, "unclosed body");
        self.kernel.body = self.stack.pop().expect("body");
        self.kernel
    }
}

// ----- errors ----------------------------------------------------------------------------

/// A malformed kernel (a bug in a kernel generator).
#[derive(Clone, Debug, PartialEq)]
pub struct KirError(pub String);

impl fmt::Display for KirError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed kernel: {}", self.0)
    }
}

impl KernelFn {
    /// Whether a statement list contains a statement that every thread of the block
    /// executes together (a `Barrier` or an `Mma`) anywhere: such statements end the
    /// barrier-free stretches of thread-loop fission.
    pub fn has_sync(stmts: &[Stmt]) -> bool {
        stmts.iter().any(|s| match s {
            Stmt::Barrier | Stmt::Mma(_) => true,
            Stmt::For(l) => Self::has_sync(&l.body),
            Stmt::If {
                then, otherwise, ..
            } => Self::has_sync(then) || Self::has_sync(otherwise),
            _ => false,
        })
    }
}
