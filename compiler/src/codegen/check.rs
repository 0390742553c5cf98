//! The KIR checker: [`KernelFn::check`] is the only way to make a [`CheckedKernel`], the
//! kernel every later stage (thread-loop fission, the printers, the interpreter) takes.
//!
//! Invariants a checked kernel has (see also [`super::kir`]):
//! - a block of at least one thread; parameters of f32 or i32; loop steps positive;
//! - every buffer declared, every variable declared and bound once, used only in its
//!   scope (the body that binds it) and after its binding;
//! - a `Barrier` or an `Mma` only at the top level or inside `for`/`if` whose bounds and
//!   conditions are the same for every thread of a block; no thread-dependent variable used
//!   after the next barrier or `Mma` or inside a following construct that contains one;
//! - an `Mma` only in a block of whole warps, its fragments inside private f32 arrays, C
//!   (written) overlapping neither A nor B (read by other threads);
//! - an async copy only from an f32 parameter to a shared f32 array;
//! - every expression well typed in its context ([`super::semantics`]): operands of one
//!   type, every operation defined on it, subscripts and loop bounds of index type,
//!   conditions boolean, stored and bound values of the declared type;
//! - thread-loop fission ([`super::fission::split`]) succeeds on it, so the host printer and
//!   the interpreter, which run the split kernel, cannot fail.

use std::ops::Deref;

use super::kir::{AsyncCopy, Buf, Expr, KernelFn, KirError, Mma, Stmt, Ty};
use super::semantics::{
    bin_defined, buf_decl, buf_elem, cmp_defined, operand_ty, ty_in, type_of, unary_defined,
};

/// A kernel that passed [`KernelFn::check`].
#[derive(Clone, Debug, PartialEq)]
pub struct CheckedKernel {
    kernel: KernelFn,
}

impl CheckedKernel {
    pub fn kernel(&self) -> &KernelFn {
        &self.kernel
    }

    pub fn into_kernel(self) -> KernelFn {
        self.kernel
    }
}

impl Deref for CheckedKernel {
    type Target = KernelFn;
    fn deref(&self) -> &KernelFn {
        &self.kernel
    }
}

impl KernelFn {
    /// Checks the invariants in the module documentation.
    pub fn check(&self) -> Result<CheckedKernel, KirError> {
        self.clone().into_checked()
    }

    /// [`Self::check`] without a copy.
    pub fn into_checked(self) -> Result<CheckedKernel, KirError> {
        check_decls(&self)?;
        let mut scope = Scope::new(self.vars.len());
        Checker { k: &self }.stmts(&self.body, &mut scope, true)?;
        let checked = CheckedKernel { kernel: self };
        // The host form and the interpreter run the kernel split at its barriers: a kernel
        // that cannot be split is refused here, so that they cannot fail later.
        super::fission::split(&checked)?;
        Ok(checked)
    }
}

fn check_decls(k: &KernelFn) -> Result<(), KirError> {
    if k.block == 0 {
        return Err(KirError("a block of 0 threads".into()));
    }
    for (i, d) in k.params.iter().enumerate() {
        if !matches!(d.elem, Ty::F32 | Ty::I32) {
            return Err(KirError(format!(
                "parameter {i} has elements of {:?} (f32 or i32 only)",
                d.elem
            )));
        }
    }
    Ok(())
}

/// What is known about each variable at a point of the body.
struct Scope {
    /// Bound and in scope here (bodies of loops and conditionals are nested scopes).
    defined: Vec<bool>,
    thread_dependent: Vec<bool>,
    stale: Vec<bool>,
    /// Bound anywhere before (each variable is bound once).
    bound: Vec<bool>,
}

impl Scope {
    fn new(vars: usize) -> Self {
        Scope {
            defined: vec![false; vars],
            thread_dependent: vec![false; vars],
            stale: vec![false; vars],
            bound: vec![false; vars],
        }
    }

    fn bind(&mut self, i: usize) -> Result<(), KirError> {
        match self.bound.get(i) {
            None => Err(KirError(format!("undeclared variable v{i}"))),
            Some(true) => Err(KirError(format!("variable v{i} bound twice"))),
            Some(false) => {
                self.bound[i] = true;
                Ok(())
            }
        }
    }

    /// Thread-dependent values die at a barrier and at the start of a loop or conditional
    /// that contains one (a stretch boundary).
    fn kill_thread_values(&mut self) {
        for i in 0..self.defined.len() {
            if self.defined[i] && self.thread_dependent[i] {
                self.stale[i] = true;
            }
        }
    }
}

struct Checker<'k> {
    k: &'k KernelFn,
}

impl Checker<'_> {
    fn stmts(&self, stmts: &[Stmt], scope: &mut Scope, uniform: bool) -> Result<(), KirError> {
        for s in stmts {
            match s {
                Stmt::Let(v, e) => self.let_(v.0 as usize, e, scope)?,
                Stmt::Store(buf, i, v) => self.store(*buf, i, v, scope)?,
                Stmt::For(l) => {
                    if l.step <= 0 {
                        return Err(KirError(format!("loop step {} is not positive", l.step)));
                    }
                    self.for_(l.var.0 as usize, &l.lo, &l.hi, &l.body, scope, uniform)?
                }
                Stmt::If {
                    cond,
                    then,
                    otherwise,
                } => self.if_(cond, then, otherwise, scope, uniform)?,
                Stmt::Barrier => scope.kill_thread_values(),
                Stmt::Mma(mma) => {
                    self.mma(mma)?;
                    scope.kill_thread_values()
                }
                Stmt::AsyncCopy(copy) => self.async_copy(copy, scope)?,
                Stmt::AsyncCommit | Stmt::AsyncWait(_) => {}
            }
        }
        Ok(())
    }

    fn async_copy(&self, copy: &AsyncCopy, scope: &Scope) -> Result<(), KirError> {
        let (dst, src) = (copy.dst.0, copy.src.0);
        let f32_of = |b: Buf| buf_elem(self.k, b) == Some(Ty::F32);
        if !(matches!(dst, Buf::Shared(_)) && f32_of(dst)) {
            return Err(KirError(format!(
                "an async copy to {dst:?}: only to shared f32 arrays"
            )));
        }
        if !(matches!(src, Buf::Param(_)) && f32_of(src)) {
            return Err(KirError(format!(
                "an async copy from {src:?}: only from f32 parameters"
            )));
        }
        if ![1, 4].contains(&copy.width) {
            return Err(KirError(format!(
                "an async copy of {} elements: only 1 or 4 (4 or 16 bytes)",
                copy.width
            )));
        }
        self.subscript(&copy.dst.1, scope)?;
        self.subscript(&copy.src.1, scope)?;
        self.typed(&copy.ok, Ty::Bool, "copy condition", scope)
    }

    fn mma(&self, mma: &Mma) -> Result<(), KirError> {
        if !self.k.block.is_multiple_of(32) {
            return Err(KirError(format!(
                "an mma in a block of {} threads (whole warps of 32 only)",
                self.k.block
            )));
        }
        let lens = mma.shape.fragment_lens();
        let frags = [mma.a, mma.b, mma.acc];
        for (((buf, at), len), name) in frags.iter().zip(lens).zip(["A", "B", "C"]) {
            let fits = match (buf, buf_decl(self.k, *buf)) {
                (Buf::Private(_), Some(d)) => d.elem == Ty::F32 && at + len <= d.len,
                _ => false,
            };
            if !fits {
                return Err(KirError(format!(
                    "the {name} fragment of an mma ({len} elements at {at} of {buf:?}) is \
                     not inside a private f32 array"
                )));
            }
        }
        let overlaps = |(b1, at1): (Buf, u64), l1: u64, (b2, at2): (Buf, u64), l2: u64| {
            b1 == b2 && at1 < at2 + l2 && at2 < at1 + l1
        };
        if overlaps(mma.acc, lens[2], mma.a, lens[0]) || overlaps(mma.acc, lens[2], mma.b, lens[1])
        {
            return Err(KirError(
                "the C fragment of an mma overlaps its A or B fragment".into(),
            ));
        }
        Ok(())
    }

    fn let_(&self, i: usize, e: &Expr, scope: &mut Scope) -> Result<(), KirError> {
        let want = *self
            .k
            .vars
            .get(i)
            .ok_or_else(|| KirError(format!("undeclared variable v{i}")))?;
        self.expr(e, want, scope)?;
        scope.bind(i)?;
        let got = type_of(self.k, e).unwrap_or(want);
        if got != want {
            return Err(KirError(format!("v{i} is {want:?} but bound to a {got:?}")));
        }
        scope.defined[i] = true;
        scope.thread_dependent[i] = thread_dependent(e, scope);
        Ok(())
    }

    fn store(&self, buf: Buf, i: &Expr, v: &Expr, scope: &Scope) -> Result<(), KirError> {
        let elem = buf_elem(self.k, buf)
            .ok_or_else(|| KirError(format!("store to undeclared {buf:?}")))?;
        self.subscript(i, scope)?;
        self.expr(v, elem, scope)?;
        match type_of(self.k, v) {
            Some(t) if t != elem => Err(KirError(format!(
                "store of {t:?} into {elem:?} array {buf:?}"
            ))),
            _ => Ok(()),
        }
    }

    fn for_(
        &self,
        i: usize,
        lo: &Expr,
        hi: &Expr,
        body: &[Stmt],
        scope: &mut Scope,
        uniform: bool,
    ) -> Result<(), KirError> {
        self.typed(lo, Ty::Index, "loop bound", scope)?;
        self.typed(hi, Ty::Index, "loop bound", scope)?;
        let barrier = KernelFn::has_sync(body);
        let dependent = thread_dependent(lo, scope) || thread_dependent(hi, scope);
        if barrier && (dependent || !uniform) {
            return Err(KirError(
                "a loop with a barrier or mma has bounds that differ between threads".into(),
            ));
        }
        if barrier {
            // The loop is a stretch boundary: its body runs in new stretches.
            scope.kill_thread_values();
        }
        let outer = scope.defined.clone();
        scope.bind(i)?;
        if self.k.vars[i] != Ty::Index {
            return Err(KirError(format!("loop variable v{i} is not an index")));
        }
        scope.defined[i] = true;
        scope.thread_dependent[i] = dependent;
        self.stmts(body, scope, uniform && !dependent)?;
        // Variables bound in the body (and the loop variable) are local to it.
        scope.defined = outer;
        Ok(())
    }

    fn if_(
        &self,
        cond: &Expr,
        then: &[Stmt],
        otherwise: &[Stmt],
        scope: &mut Scope,
        uniform: bool,
    ) -> Result<(), KirError> {
        self.typed(cond, Ty::Bool, "condition", scope)?;
        let dependent = thread_dependent(cond, scope);
        let barrier = KernelFn::has_sync(then) || KernelFn::has_sync(otherwise);
        if barrier && (dependent || !uniform) {
            return Err(KirError(
                "a barrier or mma under a condition that differs between threads".into(),
            ));
        }
        if barrier {
            scope.kill_thread_values();
        }
        let outer = scope.defined.clone();
        self.stmts(then, scope, uniform && !dependent)?;
        scope.defined = outer.clone();
        self.stmts(otherwise, scope, uniform && !dependent)?;
        scope.defined = outer;
        Ok(())
    }

    /// Checks `e` where a value of type `want` is needed (a literal takes that type).
    fn typed(&self, e: &Expr, want: Ty, what: &str, scope: &Scope) -> Result<(), KirError> {
        self.expr(e, want, scope)?;
        match type_of(self.k, e) {
            Some(t) if t != want => {
                Err(KirError(format!("{what} of type {t:?} (must be {want:?})")))
            }
            _ => Ok(()),
        }
    }

    fn subscript(&self, i: &Expr, scope: &Scope) -> Result<(), KirError> {
        self.typed(i, Ty::Index, "subscript", scope)
    }

    /// Checks `e`, computed as a `want` where its own type does not decide.
    fn expr(&self, e: &Expr, want: Ty, scope: &Scope) -> Result<(), KirError> {
        let t = ty_in(self.k, e, want);
        match e {
            Expr::Var(v) => self.var(v.0 as usize, scope),
            Expr::Int(_) | Expr::F32(_) | Expr::ThreadId | Expr::BlockId => Ok(()),
            Expr::Bin(op, a, b) => {
                self.same_types(a, b, &format!("{op:?}"), t, scope)?;
                if !bin_defined(*op, t) {
                    return Err(KirError(format!("{op:?} of {t:?} values")));
                }
                Ok(())
            }
            Expr::Cmp(op, a, b) => {
                let ot = operand_ty(self.k, a, b);
                self.same_types(a, b, "comparison", ot, scope)?;
                if !cmp_defined(*op, ot) {
                    return Err(KirError(format!("{op:?} of booleans")));
                }
                Ok(())
            }
            Expr::Select(c, a, b) => {
                self.expr(c, Ty::Bool, scope)?;
                if type_of(self.k, c) != Some(Ty::Bool) {
                    return Err(KirError("select on a non-boolean".into()));
                }
                self.same_types(a, b, "select between", t, scope)
            }
            Expr::Load(buf, i) => {
                buf_elem(self.k, *buf)
                    .ok_or_else(|| KirError(format!("load from undeclared {buf:?}")))?;
                self.subscript(i, scope)
            }
            Expr::Unary(op, a) => {
                self.expr(a, t, scope)?;
                if !unary_defined(*op, t) {
                    return Err(KirError(format!("{op:?} of {t:?}")));
                }
                Ok(())
            }
            Expr::Cast(_, a) => self.expr(a, Ty::Index, scope),
        }
    }

    /// Checks two operands computed in type `t`: neither may have another type.
    fn same_types(
        &self,
        a: &Expr,
        b: &Expr,
        what: &str,
        t: Ty,
        scope: &Scope,
    ) -> Result<(), KirError> {
        self.expr(a, t, scope)?;
        self.expr(b, t, scope)?;
        match (type_of(self.k, a), type_of(self.k, b)) {
            (Some(ta), Some(tb)) if ta != tb => {
                Err(KirError(format!("{what} of {ta:?} and {tb:?}")))
            }
            _ => Ok(()),
        }
    }

    fn var(&self, i: usize, scope: &Scope) -> Result<(), KirError> {
        if i >= scope.defined.len() || !scope.defined[i] {
            return Err(KirError(format!("v{i} used before it is bound")));
        }
        if scope.stale[i] {
            return Err(KirError(format!(
                "v{i} depends on the thread and is used after a barrier"
            )));
        }
        Ok(())
    }
}

/// Whether `e` can differ between the threads of a block.
fn thread_dependent(e: &Expr, scope: &Scope) -> bool {
    e.any(&mut |x| match x {
        Expr::ThreadId | Expr::Load(Buf::Private(_) | Buf::Shared(_), _) => true,
        Expr::Var(v) => scope
            .thread_dependent
            .get(v.0 as usize)
            .copied()
            .unwrap_or(true),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use crate::codegen::kir::{Expr, KernelBuilder, Ty};

    #[test]
    fn thread_values_do_not_cross_barriers() {
        let mut b = KernelBuilder::new("t", 4);
        let out = b.param(Ty::F32, 4);
        let s = b.shared(Ty::F32, 4);
        let t = b.let_(Expr::ThreadId * 2);
        b.store(s, Expr::ThreadId, Expr::f32(1.0));
        b.barrier();
        b.store(out, t, Expr::load(s, 0));
        assert!(b.finish().check().is_err());

        let mut b = KernelBuilder::new("t", 4);
        let out = b.param(Ty::F32, 4);
        b.for_(Expr::ThreadId, 4, 4, |b, _| b.barrier());
        b.store(out, 0, Expr::f32(0.0));
        assert!(
            b.finish().check().is_err(),
            "barrier in a thread-dependent loop"
        );

        let mut b = KernelBuilder::new("t", 4);
        let out = b.param(Ty::F32, 4);
        let base = b.let_(Expr::BlockId * 4);
        b.barrier();
        b.store(out, base + Expr::ThreadId, Expr::f32(0.0));
        assert_eq!(
            b.finish().check().map(|_| ()),
            Ok(()),
            "uniform values cross barriers"
        );

        // Entering a uniform loop with a barrier ends the stretch (the second iteration
        // would use the value after a barrier).
        let mut b = KernelBuilder::new("t", 4);
        let out = b.param(Ty::F32, 4);
        let t = b.let_(Expr::ThreadId * 2);
        b.for_(0, 2, 1, |b, _| {
            b.store(out, t.clone(), Expr::f32(0.0));
            b.barrier();
        });
        assert!(b.finish().check().is_err());

        // Variables bound in a body are local to it.
        let mut b = KernelBuilder::new("t", 4);
        let out = b.param(Ty::F32, 4);
        let mut inner = None;
        b.if_(Expr::BlockId.eq(0), |b| {
            inner = Some(b.let_(Expr::BlockId + 1))
        });
        b.store(out, inner.unwrap(), Expr::f32(0.0));
        assert!(b.finish().check().is_err());
    }

    #[test]
    fn type_errors_are_caught() {
        let mut b = KernelBuilder::new("t", 1);
        let out = b.param(Ty::F32, 1);
        b.store(out, 0, Expr::ThreadId);
        assert!(b.finish().check().is_err());
        let mut b = KernelBuilder::new("t", 1);
        let out = b.param(Ty::F32, 1);
        b.store(out, 0, Expr::f32(1.0).exp() + Expr::ThreadId);
        assert!(b.finish().check().is_err());
    }
}
