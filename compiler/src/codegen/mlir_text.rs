//! Kernel IR as MLIR text: a GPU kernel ([`gpu_module`]) and the same kernel as a host
//! function over a range of blocks ([`host_module`]).
//!
//! Both use only upstream dialects (`arith`, `math`, `scf`, `memref`, `gpu`, `func`) and
//! are accepted by `mlir-opt-22`. Parameters are static 1-D memrefs; every `Let` gets an SSA
//! value `%vN` (a `Let` of a bare variable or thread id reuses that value), loop variables
//! are `%vN` too, temporaries `%N`, constants are defined once at the top of the function
//! (`%c4` index, `%c4_i32`, `%c4_i64`, `%cm1` for -1, `%true`, `%cstN` for f32).
//!
//! GPU form: `gpu.func @NAME(...) workgroup(%sharedI: memref<..., #gpu.address_space<workgroup>>)
//! kernel attributes {known_block_size = array<i32: BLOCK, 1, 1>, nvvm.minctasm = 1 : i32}`
//! (one block per multiprocessor is enough: ptxas may then use up to 255 registers per
//! thread instead of spilling to reach a higher occupancy), with `%tid` and `%bid`
//! from `gpu.thread_id x` / `gpu.block_id x`, private arrays as `memref.alloca` in the
//! kernel and barriers as `gpu.barrier`.
//!
//! Host form: `func.func @NAME(..., %first_block: index, %end_block: index)` running blocks
//! `first_block..end_block` in a loop (`%bid`). Shared arrays are allocas of their length;
//! private arrays are allocas of `block * len` elements, thread `t` using `[t*len, (t+1)*len)`.
//! The body is split by thread-loop fission ([`super::fission`], the same split the
//! interpreter runs): each barrier-free stretch becomes `scf.for %tidN = %c0 to %cBLOCK`,
//! uniform loops and conditionals that contain barriers stay loops and conditionals around
//! their split bodies, `Let`s that cannot differ between threads are hoisted out of the
//! thread loops, and barriers print nothing.

use std::collections::HashMap;
use std::fmt::Write;

use super::check::CheckedKernel;
use super::fission::{split, Step, ThreadLoops};
use super::kir::{
    ArrayDecl, AsyncCopy, BinOp, Buf, CmpOp, Expr, Mma, MmaShape, Stmt, Ty, UnOp, Var,
};
use super::semantics::{buf_decl, cast_source_ty, cast_steps, operand_ty, ty_in, CastOp};

/// The host lowering of [`host_module`]'s output (the CPU executor's code, through MLIR
/// passes in the LLVM crate): structured control flow, math, arithmetic, memrefs and functions to
/// the LLVM dialect, memrefs passed as bare pointers.
pub const HOST_PIPELINE: &str = "builtin.module(convert-scf-to-cf, convert-math-to-llvm, \
     convert-arith-to-llvm, convert-index-to-llvm, finalize-memref-to-llvm, convert-cf-to-llvm, \
     convert-func-to-llvm{use-bare-ptr-memref-call-conv=1}, reconcile-unrealized-casts)";

/// The GPU lowering of [`gpu_module`]'s output: inside the `gpu.module`, scf to cf, then the GPU, math (to libdevice
/// calls), arith and memref ops to the LLVM and NVVM dialects with bare-pointer kernel
/// parameters (the NVVM ops the printer writes itself, `nvvm.mma.sync`,
/// `nvvm.convert.float.to.tf32` and the `cp.async` group ops, translate to LLVM intrinsics
/// as they are; `nvgpu.device_async_copy` needs `convert-nvgpu-to-nvvm`, without which it
/// would survive and fail translation); cf to LLVM at module level.
pub const GPU_PIPELINE: &str = "builtin.module(gpu.module(convert-scf-to-cf, \
     convert-nvgpu-to-nvvm, \
     convert-gpu-to-nvvm{use-bare-ptr-memref-call-conv=1 index-bitwidth=64}, \
     reconcile-unrealized-casts), convert-cf-to-llvm, reconcile-unrealized-casts)";

/// The kernel as a `gpu.func` in `gpu.module @kernels`.
pub fn gpu_module(k: &CheckedKernel, name: &str) -> String {
    let mut p = Printer::new(k, false);
    p.indent = 3;
    p.stmts(&k.body);

    let args: Vec<String> = (0..k.params.len())
        .map(|i| format!("%arg{i}: {}", p.memref(Buf::Param(i))))
        .collect();
    let args = args.join(", ");
    let workgroup = if k.shared.is_empty() {
        String::new()
    } else {
        // 16-byte aligned: the destination of 16-byte async copies.
        let shared: Vec<String> = (0..k.shared.len())
            .map(|i| {
                let ty = p.memref(Buf::Shared(i));
                format!("%shared{i}: {ty} {{llvm.align = 16 : i64}}")
            })
            .collect();
        format!(" workgroup({})", shared.join(", "))
    };
    let mut s = String::new();
    s.push_str("module attributes {gpu.container_module} {\n");
    s.push_str("  gpu.module @kernels {\n");
    let _ = writeln!(
        s,
        "    gpu.func @{}({args}){workgroup} kernel attributes {{known_block_size = array<i32: {}, 1, 1>, nvvm.minctasm = 1 : i32}} {{",
        symbol(name),
        k.block
    );
    s.push_str("      %tid = gpu.thread_id x\n");
    s.push_str("      %bid = gpu.block_id x\n");
    for c in &p.consts {
        let _ = writeln!(s, "      {c}");
    }
    for i in 0..k.private.len() {
        let _ = writeln!(
            s,
            "      %private{i} = memref.alloca() : {}",
            p.memref(Buf::Private(i))
        );
    }
    s.push_str(&p.out);
    s.push_str("      gpu.return\n");
    s.push_str("    }\n");
    s.push_str("  }\n");
    s.push_str("}\n");
    s
}

/// The kernel as a host function running blocks `first_block..end_block`: thread-loop
/// fission ([`split`]), then [`host_text`]. Fails only where fission does.
pub fn host_module(k: &CheckedKernel, name: &str) -> String {
    let loops = split(k).expect("a checked kernel splits (checked in KernelFn::into_checked)");
    host_text(&loops, name)
}

/// The kernel as a host function running blocks `first_block..end_block`.
pub fn host_text(loops: &ThreadLoops<'_>, name: &str) -> String {
    let k = loops.kernel();
    let mut p = Printer::new(k, true);
    // The thread and block loops use these names.
    p.int_const(Ty::Index, 0);
    p.int_const(Ty::Index, 1);
    p.indent = 3;
    p.steps(loops.steps());

    let mut args: Vec<String> = (0..k.params.len())
        .map(|i| format!("%arg{i}: {}", p.memref(Buf::Param(i))))
        .collect();
    args.push("%first_block: index".into());
    args.push("%end_block: index".into());
    let mut s = String::new();
    s.push_str("module {\n");
    let _ = writeln!(s, "  func.func @{}({}) {{", symbol(name), args.join(", "));
    for c in &p.consts {
        let _ = writeln!(s, "    {c}");
    }
    for i in 0..k.shared.len() {
        let _ = writeln!(
            s,
            "    %shared{i} = memref.alloca() : {}",
            p.memref(Buf::Shared(i))
        );
    }
    for i in 0..k.private.len() {
        let _ = writeln!(
            s,
            "    %private{i} = memref.alloca() : {}",
            p.memref(Buf::Private(i))
        );
    }
    s.push_str("    scf.for %bid = %first_block to %end_block step %c1 {\n");
    s.push_str(&p.out);
    s.push_str("    }\n");
    s.push_str("    return\n");
    s.push_str("  }\n");
    s.push_str("}\n");
    s
}

/// `name` as a symbol: bare where MLIR allows, quoted otherwise.
fn symbol(name: &str) -> String {
    let bare = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '.'));
    if bare {
        name.to_string()
    } else {
        let escaped: String = name
            .chars()
            .flat_map(|c| match c {
                '"' => vec!['\\', '"'],
                '\\' => vec!['\\', '\\'],
                c => vec![c],
            })
            .collect();
        format!("\"{escaped}\"")
    }
}

/// An f32 literal MLIR reads back exactly: decimal where that round-trips, hex otherwise.
fn f32_literal(v: f32) -> String {
    if v.is_finite() {
        let mut s = format!("{v:?}");
        if !s.contains('.') {
            match s.find('e') {
                Some(e) => s.insert_str(e, ".0"),
                None => s.push_str(".0"),
            }
        }
        if s.parse::<f64>().map(|d| d as f32) == Ok(v) {
            return s;
        }
    }
    format!("0x{:08X}", v.to_bits())
}

fn cmp_pred(op: CmpOp, t: Ty) -> &'static str {
    match (t, op) {
        (Ty::F32, CmpOp::Lt) => "olt",
        (Ty::F32, CmpOp::Le) => "ole",
        (Ty::F32, CmpOp::Gt) => "ogt",
        (Ty::F32, CmpOp::Ge) => "oge",
        (Ty::F32, CmpOp::Eq) => "oeq",
        (Ty::F32, CmpOp::Ne) => "une",
        (_, CmpOp::Eq) => "eq",
        (_, CmpOp::Ne) => "ne",
        (Ty::I64, CmpOp::Lt) => "ult",
        (Ty::I64, CmpOp::Le) => "ule",
        (Ty::I64, CmpOp::Gt) => "ugt",
        (Ty::I64, CmpOp::Ge) => "uge",
        (_, CmpOp::Lt) => "slt",
        (_, CmpOp::Le) => "sle",
        (_, CmpOp::Gt) => "sgt",
        (_, CmpOp::Ge) => "sge",
    }
}

fn bin_op(op: BinOp, t: Ty) -> &'static str {
    let unsigned = t == Ty::I64;
    match (op, t) {
        (BinOp::Add, Ty::F32) => "addf",
        (BinOp::Sub, Ty::F32) => "subf",
        (BinOp::Mul, Ty::F32) => "mulf",
        (BinOp::Div, Ty::F32) => "divf",
        (BinOp::Min, Ty::F32) => "minimumf",
        (BinOp::Max, Ty::F32) => "maximumf",
        (BinOp::Add, _) => "addi",
        (BinOp::Sub, _) => "subi",
        (BinOp::Mul, _) => "muli",
        (BinOp::Div, _) if unsigned => "divui",
        (BinOp::Div, _) => "divsi",
        (BinOp::Rem, _) if unsigned => "remui",
        (BinOp::Rem, _) => "remsi",
        (BinOp::Min, _) if unsigned => "minui",
        (BinOp::Min, _) => "minsi",
        (BinOp::Max, _) if unsigned => "maxui",
        (BinOp::Max, _) => "maxsi",
        (BinOp::And, _) => "andi",
        (BinOp::Or, _) => "ori",
        (BinOp::Xor, _) => "xori",
        (BinOp::Shl, _) => "shli",
        (BinOp::ShrU, _) => "shrui",
    }
}

struct Printer<'k> {
    k: &'k CheckedKernel,
    host: bool,
    /// The body, indented.
    out: String,
    indent: usize,
    /// Constant definitions, printed at the top of the function.
    consts: Vec<String>,
    const_names: HashMap<(Ty, u64), String>,
    floats: usize,
    next: usize,
    names: Vec<Option<String>>,
    /// The thread id in scope (`%tid` on the GPU, the thread loop's variable on the host).
    tid: Option<String>,
    threads: usize,
    /// Host: `%tid * len` of each private array in the current thread loop.
    private_base: Vec<Option<String>>,
}

impl<'k> Printer<'k> {
    fn new(k: &'k CheckedKernel, host: bool) -> Self {
        Printer {
            k,
            host,
            out: String::new(),
            indent: 0,
            consts: Vec::new(),
            const_names: HashMap::new(),
            floats: 0,
            next: 0,
            names: vec![None; k.vars.len()],
            tid: if host { None } else { Some("%tid".into()) },
            threads: 0,
            private_base: vec![None; k.private.len()],
        }
    }

    fn line(&mut self, s: &str) {
        for _ in 0..self.indent {
            self.out.push_str("  ");
        }
        self.out.push_str(s);
        self.out.push('\n');
    }

    fn fresh(&mut self) -> String {
        self.next += 1;
        format!("%{}", self.next - 1)
    }

    fn int_const(&mut self, t: Ty, v: i64) -> String {
        let v = match t {
            Ty::I32 => v as i32 as i64,
            Ty::Bool => (v != 0) as i64,
            _ => v,
        };
        if t == Ty::F32 {
            return self.f32_const(v as f32);
        }
        if let Some(n) = self.const_names.get(&(t, v as u64)) {
            return n.clone();
        }
        let digits = if v < 0 {
            format!("m{}", v.unsigned_abs())
        } else {
            v.to_string()
        };
        let (name, def) = match t {
            Ty::Bool if v != 0 => ("%true".to_string(), "arith.constant true".to_string()),
            Ty::Bool => ("%false".to_string(), "arith.constant false".to_string()),
            Ty::Index => (format!("%c{digits}"), format!("arith.constant {v} : index")),
            _ => (
                format!("%c{digits}_{}", t.mlir()),
                format!("arith.constant {v} : {}", t.mlir()),
            ),
        };
        self.consts.push(format!("{name} = {def}"));
        self.const_names.insert((t, v as u64), name.clone());
        name
    }

    fn f32_const(&mut self, v: f32) -> String {
        let key = (Ty::F32, v.to_bits() as u64);
        if let Some(n) = self.const_names.get(&key) {
            return n.clone();
        }
        let name = format!("%cst{}", self.floats);
        self.floats += 1;
        self.consts
            .push(format!("{name} = arith.constant {} : f32", f32_literal(v)));
        self.const_names.insert(key, name.clone());
        name
    }

    fn decl(&self, buf: Buf) -> ArrayDecl {
        buf_decl(self.k, buf).expect("a checked kernel declares its buffers")
    }

    fn memref(&self, buf: Buf) -> String {
        let d = self.decl(buf);
        match buf {
            Buf::Shared(_) if !self.host => format!(
                "memref<{}x{}, #gpu.address_space<workgroup>>",
                d.len,
                d.elem.mlir()
            ),
            Buf::Private(_) if self.host => {
                format!("memref<{}x{}>", d.len * self.k.block as u64, d.elem.mlir())
            }
            _ => format!("memref<{}x{}>", d.len, d.elem.mlir()),
        }
    }

    fn buf_name(buf: Buf) -> String {
        match buf {
            Buf::Param(i) => format!("%arg{i}"),
            Buf::Shared(i) => format!("%shared{i}"),
            Buf::Private(i) => format!("%private{i}"),
        }
    }

    /// The memref subscript of element `index` of `buf`.
    fn subscript(&mut self, buf: Buf, i: &Expr) -> String {
        let index = self.val(i, Ty::Index, None);
        match buf {
            Buf::Private(p) if self.host => {
                // Fission keeps private data inside thread loops.
                let base = self.private_base[p]
                    .clone()
                    .expect("a private array inside a thread loop");
                if *i == Expr::Int(0) {
                    return base;
                }
                let r = self.fresh();
                self.line(&format!("{r} = arith.addi {base}, {index} : index"));
                r
            }
            _ => index,
        }
    }

    fn stmts(&mut self, stmts: &[Stmt]) {
        stmts.iter().for_each(|s| self.stmt(s))
    }

    fn let_(&mut self, v: Var, e: &Expr) {
        let i = v.0 as usize;
        let n = self.val(e, self.k.vars[i], Some(format!("%v{i}")));
        self.names[i] = Some(n);
    }

    fn stmt(&mut self, s: &Stmt) {
        match s {
            Stmt::Let(v, e) => self.let_(*v, e),
            Stmt::Store(buf, i, v) => {
                let elem = self.decl(*buf).elem;
                let sub = self.subscript(*buf, i);
                let x = self.val(v, elem, None);
                let line = format!(
                    "memref.store {x}, {}[{sub}] : {}",
                    Self::buf_name(*buf),
                    self.memref(*buf)
                );
                self.line(&line);
            }
            Stmt::For(l) => {
                self.open_for(l.var, &l.lo, &l.hi, l.step);
                self.stmts(&l.body);
                if l.vectorize && self.host {
                    // convert-scf-to-cf puts it on the latch branch: `!llvm.loop` metadata.
                    self.indent -= 1;
                    self.line(
                        "} {loop_annotation = #llvm.loop_annotation<vectorize = <disable = false, width = 8 : i32>>}",
                    );
                } else {
                    self.close();
                }
            }
            Stmt::If {
                cond,
                then,
                otherwise,
            } => {
                self.open_if(cond);
                self.stmts(then);
                if !otherwise.is_empty() {
                    self.open_else();
                    self.stmts(otherwise);
                }
                self.close();
            }
            // Host stretches hold no barriers or mmas (fission splits at them).
            Stmt::Barrier => {
                assert!(!self.host, "a barrier inside a barrier-free stretch");
                self.line("gpu.barrier")
            }
            Stmt::Mma(mma) => {
                assert!(!self.host, "an mma inside a barrier-free stretch");
                self.gpu_mma(mma)
            }
            Stmt::AsyncCopy(copy) => self.async_copy(copy),
            // The host completes each copy at once: commits and waits have nothing to do.
            Stmt::AsyncCommit if !self.host => self.line("nvvm.cp.async.commit.group"),
            Stmt::AsyncWait(n) if !self.host => self.line(&format!("nvvm.cp.async.wait.group {n}")),
            Stmt::AsyncCommit | Stmt::AsyncWait(_) => {}
        }
    }

    fn open_for(&mut self, var: Var, lo: &Expr, hi: &Expr, step: i64) {
        let i = var.0 as usize;
        let lo = self.val(lo, Ty::Index, None);
        let hi = self.val(hi, Ty::Index, None);
        let step = self.int_const(Ty::Index, step);
        let v = format!("%v{i}");
        self.line(&format!("scf.for {v} = {lo} to {hi} step {step} {{"));
        self.names[i] = Some(v);
        self.indent += 1;
    }

    /// `scf.if COND {` (closed by [`Self::close`]).
    fn open_if(&mut self, cond: &Expr) {
        let c = self.val(cond, Ty::Bool, None);
        self.line(&format!("scf.if {c} {{"));
        self.indent += 1;
    }

    fn open_else(&mut self) {
        self.indent -= 1;
        self.line("} else {");
        self.indent += 1;
    }

    fn close(&mut self) {
        self.indent -= 1;
        self.line("}");
    }

    /// Host: the steps of thread-loop fission.
    fn steps(&mut self, steps: &[Step<'_>]) {
        for s in steps {
            match s {
                Step::Uniform(v, e) => self.let_(*v, e),
                Step::Threads(stmts) => self.thread_loop(stmts),
                Step::Mma(mma) => self.host_mma(mma),
                Step::For {
                    var,
                    lo,
                    hi,
                    step,
                    body,
                } => {
                    self.open_for(*var, lo, hi, *step);
                    self.steps(body);
                    self.close();
                }
                Step::If {
                    cond,
                    then,
                    otherwise,
                } => {
                    self.open_if(cond);
                    self.steps(then);
                    if !otherwise.is_empty() {
                        self.open_else();
                        self.steps(otherwise);
                    }
                    self.close();
                }
            }
        }
    }

    /// Host: one barrier-free stretch as a loop over the threads of the block.
    fn thread_loop(&mut self, stmts: &[&Stmt]) {
        let tid = format!("%tid{}", self.threads);
        self.threads += 1;
        let block = self.int_const(Ty::Index, self.k.block as i64);
        self.line(&format!("scf.for {tid} = %c0 to {block} step %c1 {{"));
        self.indent += 1;
        let mut used = vec![false; self.k.private.len()];
        for s in stmts {
            privates_in_stmt(s, &mut used);
        }
        for (i, used) in used.into_iter().enumerate() {
            let len = self.k.private[i].len as i64;
            if used && len == 1 {
                self.private_base[i] = Some(tid.clone());
            } else if used {
                let len = self.int_const(Ty::Index, len);
                let base = self.fresh();
                self.line(&format!("{base} = arith.muli {tid}, {len} : index"));
                self.private_base[i] = Some(base);
            }
        }
        self.tid = Some(tid);
        for s in stmts {
            self.stmt(s);
        }
        self.tid = None;
        self.private_base.iter_mut().for_each(|b| *b = None);
        self.close();
    }

    /// Prints `e` (of type `want` where its own type does not decide) and returns its SSA
    /// value; the last op is named `name` where given.
    fn val(&mut self, e: &Expr, want: Ty, name: Option<String>) -> String {
        let t = ty_in(self.k, e, want);
        match e {
            Expr::Int(v) => self.int_const(t, *v),
            Expr::F32(v) => self.f32_const(*v),
            Expr::Var(v) => self.names[v.0 as usize]
                .clone()
                .expect("a checked (and split) kernel binds variables before their uses"),
            Expr::ThreadId => self
                .tid
                .clone()
                .expect("fission keeps the thread id inside thread loops"),
            Expr::BlockId => "%bid".to_string(),
            Expr::Bin(op, a, b) => self.bin(*op, a, b, t, name),
            Expr::Cmp(op, a, b) => {
                let ot = operand_ty(self.k, a, b);
                let a = self.val(a, ot, None);
                let b = self.val(b, ot, None);
                let r = name.unwrap_or_else(|| self.fresh());
                let kind = if ot == Ty::F32 { "cmpf" } else { "cmpi" };
                self.line(&format!(
                    "{r} = arith.{kind} {}, {a}, {b} : {}",
                    cmp_pred(*op, ot),
                    ot.mlir()
                ));
                r
            }
            Expr::Select(c, a, b) => {
                let c = self.val(c, Ty::Bool, None);
                let a = self.val(a, t, None);
                let b = self.val(b, t, None);
                let r = name.unwrap_or_else(|| self.fresh());
                self.line(&format!("{r} = arith.select {c}, {a}, {b} : {}", t.mlir()));
                r
            }
            Expr::Load(buf, i) => {
                let sub = self.subscript(*buf, i);
                let r = name.unwrap_or_else(|| self.fresh());
                let line = format!(
                    "{r} = memref.load {}[{sub}] : {}",
                    Self::buf_name(*buf),
                    self.memref(*buf)
                );
                self.line(&line);
                r
            }
            Expr::Unary(op, a) => self.unary(*op, a, t, name),
            Expr::Cast(to, a) => self.cast(*to, a, name),
        }
    }

    fn bin(&mut self, op: BinOp, a: &Expr, b: &Expr, t: Ty, name: Option<String>) -> String {
        let a = self.val(a, t, None);
        let b = self.val(b, t, None);
        let r = name.unwrap_or_else(|| self.fresh());
        // Multiply-adds may fuse into FMAs (as CUDA compilers do by default).
        let contract = if t == Ty::F32 && matches!(op, BinOp::Add | BinOp::Sub | BinOp::Mul) {
            " fastmath<contract>"
        } else {
            ""
        };
        self.line(&format!(
            "{r} = arith.{} {a}, {b}{contract} : {}",
            bin_op(op, t),
            t.mlir()
        ));
        r
    }

    fn unary(&mut self, op: UnOp, a: &Expr, t: Ty, name: Option<String>) -> String {
        let ts = t.mlir();
        let a = self.val(a, t, None);
        match op {
            UnOp::RoundTf32 => return self.round_tf32(&a, name),
            UnOp::RoundBf16 => return self.round_bf16(&a, name),
            _ => {}
        }
        let line = match (op, t) {
            (UnOp::Neg, Ty::F32) => format!("arith.negf {a} : f32"),
            (UnOp::Neg, _) => {
                let zero = self.int_const(t, 0);
                format!("arith.subi {zero}, {a} : {ts}")
            }
            (UnOp::Exp, _) => format!("math.exp {a} : f32"),
            (UnOp::Log, _) => format!("math.log {a} : f32"),
            (UnOp::Sqrt, _) => format!("math.sqrt {a} : f32"),
            (UnOp::Not, _) => {
                let ones = self.int_const(t, -1);
                format!("arith.xori {a}, {ones} : {ts}")
            }
            (UnOp::RoundTf32 | UnOp::RoundBf16, _) => unreachable!("printed above"),
        };
        let r = name.unwrap_or_else(|| self.fresh());
        self.line(&format!("{r} = {line}"));
        r
    }

    /// `x` rounded to TF32 ([`super::semantics::round_tf32`]): `cvt.rna.tf32.f32` on the
    /// GPU, its bit arithmetic on the host.
    fn round_tf32(&mut self, x: &str, name: Option<String>) -> String {
        let bits = if !self.host {
            let bits = self.fresh();
            self.line(&format!(
                "{bits} = nvvm.convert.float.to.tf32 {x} {{rnd = #nvvm.fp_rnd_mode<rna>}}"
            ));
            bits
        } else {
            let (exp, half, keep) = (
                self.int_const(Ty::I32, 0x7f80_0000),
                self.int_const(Ty::I32, 0x1000),
                self.int_const(Ty::I32, !0x1fff),
            );
            let raw = self.to_bits(x);
            let [e, special, up, rounded, bits] = [(); 5].map(|_| self.fresh());
            self.line(&format!("{e} = arith.andi {raw}, {exp} : i32"));
            self.line(&format!("{special} = arith.cmpi eq, {e}, {exp} : i32"));
            self.line(&format!("{up} = arith.addi {raw}, {half} : i32"));
            self.line(&format!("{rounded} = arith.andi {up}, {keep} : i32"));
            self.line(&format!(
                "{bits} = arith.select {special}, {raw}, {rounded} : i32"
            ));
            bits
        };
        self.from_bits(&bits, name)
    }

    /// `x` rounded to BF16 ([`super::semantics::round_bf16`]) by bit arithmetic: the bits
    /// plus `0x7fff` and the lowest kept bit (ties to even), truncated; NaNs kept.
    fn round_bf16(&mut self, x: &str, name: Option<String>) -> String {
        let (c16, one, half, keep) = (
            self.int_const(Ty::I32, 16),
            self.int_const(Ty::I32, 1),
            self.int_const(Ty::I32, 0x7fff),
            self.int_const(Ty::I32, 0xffff_0000u32 as i32 as i64),
        );
        let raw = self.to_bits(x);
        let [shifted, odd, bias, up, rounded, nan, bits] = [(); 7].map(|_| self.fresh());
        self.line(&format!("{shifted} = arith.shrui {raw}, {c16} : i32"));
        self.line(&format!("{odd} = arith.andi {shifted}, {one} : i32"));
        self.line(&format!("{bias} = arith.addi {odd}, {half} : i32"));
        self.line(&format!("{up} = arith.addi {raw}, {bias} : i32"));
        self.line(&format!("{rounded} = arith.andi {up}, {keep} : i32"));
        self.line(&format!("{nan} = arith.cmpf uno, {x}, {x} : f32"));
        self.line(&format!(
            "{bits} = arith.select {nan}, {raw}, {rounded} : i32"
        ));
        self.from_bits(&bits, name)
    }

    /// The bits of the f32 `x` as an i32.
    fn to_bits(&mut self, x: &str) -> String {
        let r = self.fresh();
        self.line(&format!("{r} = arith.bitcast {x} : f32 to i32"));
        r
    }

    /// The f32 whose bits are the i32 `bits` (named `name` where given).
    fn from_bits(&mut self, bits: &str, name: Option<String>) -> String {
        let r = name.unwrap_or_else(|| self.fresh());
        self.line(&format!("{r} = arith.bitcast {bits} : i32 to f32"));
        r
    }

    /// GPU: an `Mma` as `nvvm.mma.sync` over the thread's fragments (private arrays at
    /// constant subscripts, so they stay in registers). TF32 operands go as their bits;
    /// BF16 ones two to a register, the element of the lower index in the low half.
    fn gpu_mma(&mut self, mma: &Mma) {
        let [la, lb, lc] = mma.shape.fragment_lens();
        let a = self.mma_operand(mma.shape, mma.a, la);
        let b = self.mma_operand(mma.shape, mma.b, lb);
        let c = self.fragment(mma.acc, lc).join(", ");
        let (m, n, k) = mma.shape.mnk();
        // Both take their A and B registers as i32 and accumulate in f32.
        let (types, ptx) = match mma.shape {
            MmaShape::Tf32M16N8K8 => ("(i32, i32, f32)", "tf32"),
            MmaShape::Bf16M16N8K16 => ("(i32, i32, f32)", "bf16"),
        };
        let result = format!("!llvm.struct<({})>", vec!["f32"; lc as usize].join(", "));
        let d = self.fresh();
        self.line(&format!(
            "{d} = nvvm.mma.sync A[{a}] B[{b}] C[{c}] {{layoutA = #nvvm.mma_layout<row>, \
             layoutB = #nvvm.mma_layout<col>, multiplicandAPtxType = #nvvm.mma_type<{ptx}>, \
             multiplicandBPtxType = #nvvm.mma_type<{ptx}>, shape = #nvvm.shape<m = {m}, \
             n = {n}, k = {k}>}} : {types} -> {result}"
        ));
        let (buf, at) = mma.acc;
        let ty = self.memref(buf);
        for j in 0..lc {
            let v = self.fresh();
            self.line(&format!("{v} = llvm.extractvalue {d}[{j}] : {result}"));
            let sub = self.int_const(Ty::Index, (at + j) as i64);
            self.line(&format!(
                "memref.store {v}, {}[{sub}] : {ty}",
                Self::buf_name(buf)
            ));
        }
    }

    /// An async copy: `nvgpu.device_async_copy` of `width` elements (0 source elements: a
    /// zero fill) on the GPU; on the host plain copies, done at once (a schedule the
    /// asynchronous copy allows; the interpreter lands it as late as allowed instead).
    fn async_copy(&mut self, copy: &AsyncCopy) {
        let ((dst, di), (src, si)) = (&copy.dst, &copy.src);
        let ok = self.val(&copy.ok, Ty::Bool, None);
        let si = self.subscript(*src, si);
        let di = self.subscript(*dst, di);
        let (dst_ty, src_ty) = (self.memref(*dst), self.memref(*src));
        let (dst_name, src_name) = (Self::buf_name(*dst), Self::buf_name(*src));
        let width = copy.width;
        if self.host {
            let zero = self.f32_const(0.0);
            for i in 0..width {
                let (s, d) = match i {
                    0 => (si.clone(), di.clone()),
                    _ => {
                        let step = self.int_const(Ty::Index, i64::from(i));
                        let [s, d] = [(); 2].map(|_| self.fresh());
                        self.line(&format!("{s} = arith.addi {si}, {step} : index"));
                        self.line(&format!("{d} = arith.addi {di}, {step} : index"));
                        (s, d)
                    }
                };
                let [v, x] = [(); 2].map(|_| self.fresh());
                self.line(&format!("{v} = memref.load {src_name}[{s}] : {src_ty}"));
                self.line(&format!("{x} = arith.select {ok}, {v}, {zero} : f32"));
                self.line(&format!("memref.store {x}, {dst_name}[{d}] : {dst_ty}"));
            }
            return;
        }
        let all = self.int_const(Ty::Index, i64::from(width));
        let zero = self.int_const(Ty::Index, 0);
        let [n, token] = [(); 2].map(|_| self.fresh());
        self.line(&format!("{n} = arith.select {ok}, {all}, {zero} : index"));
        self.line(&format!(
            "{token} = nvgpu.device_async_copy {src_name}[{si}], {dst_name}[{di}], {width}, \
             {n} : {src_ty} to {dst_ty}"
        ));
    }

    /// GPU: loads `len` elements of a private fragment.
    fn fragment(&mut self, (buf, at): (Buf, u64), len: u64) -> Vec<String> {
        let ty = self.memref(buf);
        (0..len)
            .map(|i| {
                let sub = self.int_const(Ty::Index, (at + i) as i64);
                let v = self.fresh();
                let name = Self::buf_name(buf);
                self.line(&format!("{v} = memref.load {name}[{sub}] : {ty}"));
                v
            })
            .collect()
    }

    /// GPU: the i32 registers of an A or B fragment, comma-separated.
    fn mma_operand(&mut self, shape: MmaShape, frag: (Buf, u64), len: u64) -> String {
        let values = self.fragment(frag, len);
        let regs: Vec<String> = match shape {
            MmaShape::Tf32M16N8K8 => values.iter().map(|v| self.to_bits(v)).collect(),
            MmaShape::Bf16M16N8K16 => values
                .chunks(2)
                .map(|pair| {
                    let (lo, hi) = (self.to_bits(&pair[0]), self.to_bits(&pair[1]));
                    let c16 = self.int_const(Ty::I32, 16);
                    let top = self.int_const(Ty::I32, 0xffff_0000u32 as i32 as i64);
                    let [low, high, packed] = [(); 3].map(|_| self.fresh());
                    self.line(&format!("{low} = arith.shrui {lo}, {c16} : i32"));
                    self.line(&format!("{high} = arith.andi {hi}, {top} : i32"));
                    self.line(&format!("{packed} = arith.ori {low}, {high} : i32"));
                    packed
                })
                .collect(),
        };
        regs.join(", ")
    }

    /// Host: an `Mma` as a loop over the threads of the block, each computing its D
    /// elements ([`super::semantics::mma_element`]) from its warp's fragments. Element `j`
    /// of lane `l` (`g = l / 4`, `q = l % 4`) is `(g + 8 (j / 2), 2q + j % 2)` of the tile;
    /// the layouts place `A[g + r, k]` in lane `4g` plus the lane of `A[r, k]`, and
    /// `B[k, 2q + e]` in lane `8q` plus the lane of `B[k, e]`, at the same element. The
    /// elements and the sum over `k` are loops (the code of a kernel with many mma stays
    /// small), whose lanes and elements are [`MmaShape::a_at`] and [`MmaShape::b_at`] in
    /// closed form.
    fn host_mma(&mut self, mma: &Mma) {
        let shape = mma.shape;
        let tid = format!("%tid{}", self.threads);
        self.threads += 1;
        let block = self.index_const(u64::from(self.k.block));
        self.line(&format!("scf.for {tid} = %c0 to {block} step %c1 {{"));
        self.indent += 1;
        let (c31, c3, c8) = (
            self.index_const(31),
            self.index_const(3),
            self.index_const(8),
        );
        let cm4 = self.int_const(Ty::Index, -4);
        let lane = self.arith("andi", &tid, &c31, "index");
        let warp = self.arith("subi", &tid, &lane, "index");
        let quad = self.arith("andi", &lane, &cm4, "index");
        let q = self.arith("andi", &lane, &c3, "index");
        let q8 = self.arith("muli", &q, &c8, "index");
        let a_lane0 = self.arith("addi", &warp, &quad, "index");
        let b_lane0 = self.arith("addi", &warp, &q8, "index");
        // Element j of D: A's rows g + 8h (h = j / 2), B's column 2q + e (e = j % 2).
        let j = format!("%j{}", self.threads);
        let (zero, one) = (self.index_const(0), self.index_const(1));
        let elements = self.index_const(shape.fragment_lens()[2]);
        self.line(&format!("scf.for {j} = {zero} to {elements} step {one} {{"));
        self.indent += 1;
        let h = self.arith("shrui", &j, &one, "index");
        let e = self.arith("andi", &j, &one, "index");
        let c4 = self.index_const(4);
        let e4 = self.arith("muli", &e, &c4, "index");
        let b_lane = self.arith("addi", &b_lane0, &e4, "index");
        let acc_first = self.index_const(mma.acc.1);
        let acc_at = self.arith("addi", &j, &acc_first, "index");
        let acc = self.private_at(mma.acc.0, &tid, &acc_at);
        let kq = self.index_const(shape.k_per_q());
        let hk = self.arith("muli", &h, &kq, "index");
        let a_first = self.offset(&hk, mma.a.1);
        let b_first = self.index_const(mma.b.1);
        let [k, sum] = [(); 2].map(|_| self.fresh());
        let end = self.index_const(shape.mnk().2);
        let carried = format!("%acc{}", self.threads);
        self.line(&format!(
            "{sum} = scf.for {k} = {zero} to {end} step {one} iter_args({carried} = {acc}) -> (f32) {{"
        ));
        self.indent += 1;
        let next = self.host_mma_step(
            mma,
            &k,
            &carried,
            [(&a_lane0, &a_first), (&b_lane, &b_first)],
        );
        self.line(&format!("scf.yield {next} : f32"));
        self.close();
        let sub = self.private_sub(mma.acc.0, &tid, &acc_at);
        self.line(&format!(
            "memref.store {sum}, {}[{sub}] : {}",
            Self::buf_name(mma.acc.0),
            self.memref(mma.acc.0)
        ));
        self.close();
        self.close();
    }

    /// Host: one `k` of an mma's element: `carried + A[.., k] * B[k, ..]` where A's lane and
    /// element at `k = 0` are `a` (lane, first element) and B's `b`, the closed forms of
    /// [`MmaShape::a_at`] / [`MmaShape::b_at`] adding `(k % 4kq) / kq` to both lanes,
    /// `k % kq + 2 kq (k / 4kq)` to A's element and `k % kq + kq (k / 4kq)` to B's.
    fn host_mma_step(
        &mut self,
        mma: &Mma,
        k: &str,
        carried: &str,
        [a, b]: [(&str, &str); 2],
    ) -> String {
        let kq = mma.shape.k_per_q();
        let (mask, shift) = (
            self.index_const(4 * kq - 1),
            self.index_const(kq.trailing_zeros().into()),
        );
        let low = self.index_const(kq - 1);
        let shift4 = self.index_const((4 * kq).trailing_zeros().into());
        let (kq, kq2) = (self.index_const(kq), self.index_const(2 * kq));
        let in_quad = self.arith("andi", k, &mask, "index");
        let lane_k = self.arith("shrui", &in_quad, &shift, "index");
        let within = self.arith("andi", k, &low, "index");
        let half = self.arith("shrui", k, &shift4, "index");
        let keep = self.int_const(Ty::I32, mma.shape.operand_mask() as i32 as i64);
        let operand = |p: &mut Self, buf: Buf, (lane0, first): (&str, &str), per_half: &str| {
            let step = p.arith("muli", &half, per_half, "index");
            let at = p.arith("addi", first, &within, "index");
            let at = p.arith("addi", &at, &step, "index");
            let lane = p.arith("addi", lane0, &lane_k, "index");
            let x = p.private_at(buf, &lane, &at);
            let bits = p.to_bits(&x);
            let kept = p.arith("andi", &bits, &keep, "i32");
            p.from_bits(&kept, None)
        };
        let a = operand(self, mma.a.0, a, &kq2);
        let b = operand(self, mma.b.0, b, &kq);
        let product = self.arith("mulf", &a, &b, "f32");
        self.arith("addf", carried, &product, "f32")
    }

    /// `%r = arith.OP a, b : ty`, returning `%r`.
    fn arith(&mut self, op: &str, a: &str, b: &str, ty: &str) -> String {
        let r = self.fresh();
        self.line(&format!("{r} = arith.{op} {a}, {b} : {ty}"));
        r
    }

    fn index_const(&mut self, v: u64) -> String {
        self.int_const(Ty::Index, v as i64)
    }

    /// Host: the subscript of element `i` (an index value) of thread `thread`'s part of
    /// private `buf`.
    fn private_sub(&mut self, buf: Buf, thread: &str, i: &str) -> String {
        let len = self.index_const(self.decl(buf).len);
        let base = self.arith("muli", thread, &len, "index");
        self.arith("addi", &base, i, "index")
    }

    /// Host: loads element `i` (an index value) of thread `thread`'s part of private `buf`.
    fn private_at(&mut self, buf: Buf, thread: &str, i: &str) -> String {
        let sub = self.private_sub(buf, thread, i);
        let v = self.fresh();
        self.line(&format!(
            "{v} = memref.load {}[{sub}] : {}",
            Self::buf_name(buf),
            self.memref(buf)
        ));
        v
    }

    /// `base + delta` (an index).
    fn offset(&mut self, base: &str, delta: u64) -> String {
        if delta == 0 {
            return base.to_string();
        }
        let d = self.index_const(delta);
        self.arith("addi", base, &d, "index")
    }

    /// A conversion: the primitive steps of [`cast_steps`], one op each.
    fn cast(&mut self, to: Ty, a: &Expr, name: Option<String>) -> String {
        let from = cast_source_ty(self.k, a);
        let mut x = self.val(a, from, None);
        let steps = cast_steps(from, to);
        let mut name = name;
        for (j, step) in steps.iter().enumerate() {
            let (f, tt) = (step.from.mlir(), step.to.mlir());
            let op = match step.op {
                CastOp::FloatNonZero => {
                    let zero = self.f32_const(0.0);
                    format!("arith.cmpf une, {x}, {zero} : f32")
                }
                CastOp::IntNonZero => {
                    let zero = self.int_const(step.from, 0);
                    format!("arith.cmpi ne, {x}, {zero} : {f}")
                }
                CastOp::FpToSi => format!("arith.fptosi {x} : {f} to {tt}"),
                CastOp::FpToUi => format!("arith.fptoui {x} : {f} to {tt}"),
                CastOp::SiToFp => format!("arith.sitofp {x} : {f} to {tt}"),
                CastOp::UiToFp => format!("arith.uitofp {x} : {f} to {tt}"),
                CastOp::IndexCast => format!("arith.index_cast {x} : {f} to {tt}"),
                CastOp::IndexCastUi => format!("arith.index_castui {x} : {f} to {tt}"),
                CastOp::ExtUi => format!("arith.extui {x} : {f} to {tt}"),
                CastOp::ExtSi => format!("arith.extsi {x} : {f} to {tt}"),
                CastOp::TruncI => format!("arith.trunci {x} : {f} to {tt}"),
            };
            let r = if j + 1 == steps.len() {
                name.take().unwrap_or_else(|| self.fresh())
            } else {
                self.fresh()
            };
            self.line(&format!("{r} = {op}"));
            x = r;
        }
        x
    }
}

fn privates_in_expr(e: &Expr, used: &mut [bool]) {
    e.visit(&mut |x| {
        if let Expr::Load(Buf::Private(i), _) = x {
            if let Some(u) = used.get_mut(*i) {
                *u = true;
            }
        }
    });
}

fn privates_in_stmt(s: &Stmt, used: &mut [bool]) {
    match s {
        Stmt::Let(_, e) => privates_in_expr(e, used),
        Stmt::Store(buf, i, v) => {
            if let Buf::Private(p) = buf {
                if let Some(u) = used.get_mut(*p) {
                    *u = true;
                }
            }
            privates_in_expr(i, used);
            privates_in_expr(v, used);
        }
        Stmt::For(l) => {
            privates_in_expr(&l.lo, used);
            privates_in_expr(&l.hi, used);
            l.body.iter().for_each(|s| privates_in_stmt(s, used));
        }
        Stmt::If {
            cond,
            then,
            otherwise,
        } => {
            privates_in_expr(cond, used);
            then.iter()
                .chain(otherwise)
                .for_each(|s| privates_in_stmt(s, used));
        }
        Stmt::AsyncCopy(copy) => {
            privates_in_expr(&copy.dst.1, used);
            privates_in_expr(&copy.src.1, used);
            privates_in_expr(&copy.ok, used);
        }
        Stmt::Barrier | Stmt::Mma(_) | Stmt::AsyncCommit | Stmt::AsyncWait(_) => {}
    }
}
