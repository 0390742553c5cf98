//! Thread-loop fission: a checked kernel's body split at its barriers and tensor-core
//! operations into the steps a block runs one after the other ([`ThreadLoops`]), the form
//! the host printer and the interpreter walk.
//!
//! Each barrier-free stretch of the body becomes a [`Step::Threads`], run by thread 0, then
//! thread 1, ...; an `Mma` becomes a [`Step::Mma`], run for the whole block at once (each
//! thread's result reads the fragments of its whole warp, all written in the stretch
//! before); a `for`/`if` that contains a barrier or an `Mma` is uniform (the checker
//! guarantees it), so it stays one loop or conditional per block around its split body; a
//! `Let` whose value cannot differ between threads is hoisted out of its stretch
//! ([`Step::Uniform`]).
//!
//! Invariants of the result (checked once, by [`split`]): the bounds and conditions of
//! split constructs are block-level values; every variable a stretch uses is block-level or
//! bound earlier in the same stretch (in scope), so the host function is valid SSA; no
//! stretch contains a barrier or an `Mma` (each "barrier" below means either).

use super::check::CheckedKernel;
use super::kir::{Buf, Expr, KernelFn, KirError, Mma, Stmt, Var};

/// One step of a block after thread-loop fission.
#[derive(Debug)]
pub enum Step<'k> {
    /// A `Let` whose value is the same for every thread: evaluated once per block.
    Uniform(Var, &'k Expr),
    /// A barrier-free stretch of statements, run by every thread in turn.
    Threads(Vec<&'k Stmt>),
    /// A warp-level matrix multiply-accumulate of every warp of the block.
    Mma(&'k Mma),
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

/// A checked kernel split at its barriers (made only by [`split`]).
#[derive(Debug)]
pub struct ThreadLoops<'k> {
    kernel: &'k CheckedKernel,
    steps: Vec<Step<'k>>,
}

impl<'k> ThreadLoops<'k> {
    pub fn kernel(&self) -> &'k CheckedKernel {
        self.kernel
    }

    pub fn steps(&self) -> &[Step<'k>] {
        &self.steps
    }
}

/// Splits the body of `k` at its barriers.
///
/// A `Let` is hoisted out of its stretch when its value uses no thread id, no shared or
/// private data and only variables that are themselves block-level, and it reads no
/// parameter that its stretch stored to before it (there each thread could see its own
/// store). Fails where a value a stretch needs is bound in another stretch.
pub fn split(k: &CheckedKernel) -> Result<ThreadLoops<'_>, KirError> {
    let mut f = Fission {
        uniform: vec![false; k.vars.len()],
    };
    let steps = f.steps(&k.body)?;
    Ok(ThreadLoops { kernel: k, steps })
}

struct Fission {
    /// Variables bound at block level (visible to every stretch).
    uniform: Vec<bool>,
}

/// The stretch being collected: its statements and the parameters they store to.
#[derive(Default)]
struct Stretch<'k> {
    stmts: Vec<&'k Stmt>,
    stored: Vec<usize>,
}

impl Fission {
    fn steps<'k>(&mut self, stmts: &'k [Stmt]) -> Result<Vec<Step<'k>>, KirError> {
        let saved = self.uniform.clone();
        let mut out = Vec::new();
        let mut stretch = Stretch::default();
        for s in stmts {
            match s {
                Stmt::Barrier => self.flush(&mut out, &mut stretch)?,
                Stmt::Mma(mma) => {
                    self.flush(&mut out, &mut stretch)?;
                    out.push(Step::Mma(mma));
                }
                Stmt::For(l) if KernelFn::has_sync(&l.body) => {
                    self.flush(&mut out, &mut stretch)?;
                    self.need_uniform(&l.lo, "loop bound")?;
                    self.need_uniform(&l.hi, "loop bound")?;
                    self.uniform[l.var.0 as usize] = true;
                    let body = self.steps(&l.body)?;
                    self.uniform[l.var.0 as usize] = false;
                    out.push(Step::For {
                        var: l.var,
                        lo: &l.lo,
                        hi: &l.hi,
                        step: l.step,
                        body,
                    });
                }
                Stmt::If {
                    cond,
                    then,
                    otherwise,
                } if KernelFn::has_sync(then) || KernelFn::has_sync(otherwise) => {
                    self.flush(&mut out, &mut stretch)?;
                    self.need_uniform(cond, "condition")?;
                    let then = self.steps(then)?;
                    let otherwise = self.steps(otherwise)?;
                    out.push(Step::If {
                        cond,
                        then,
                        otherwise,
                    });
                }
                Stmt::Let(v, e) if self.is_uniform(e) && !reads_any(e, &stretch.stored) => {
                    self.uniform[v.0 as usize] = true;
                    out.push(Step::Uniform(*v, e));
                }
                _ => {
                    stores_of(s, &mut stretch.stored);
                    stretch.stmts.push(s);
                }
            }
        }
        self.flush(&mut out, &mut stretch)?;
        self.uniform = saved;
        Ok(out)
    }

    fn flush<'k>(
        &mut self,
        out: &mut Vec<Step<'k>>,
        stretch: &mut Stretch<'k>,
    ) -> Result<(), KirError> {
        if stretch.stmts.is_empty() {
            return Ok(());
        }
        let mut defined = self.uniform.clone();
        for s in &stretch.stmts {
            validate(s, &mut defined)?;
        }
        out.push(Step::Threads(std::mem::take(&mut stretch.stmts)));
        stretch.stored.clear();
        Ok(())
    }

    fn is_uniform(&self, e: &Expr) -> bool {
        !e.any(&mut |x| match x {
            Expr::ThreadId | Expr::Load(Buf::Shared(_) | Buf::Private(_), _) => true,
            Expr::Var(v) => !self.uniform.get(v.0 as usize).copied().unwrap_or(false),
            _ => false,
        })
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
}

/// Checks that the stretch statement `s` only uses variables of `defined` (block-level or
/// earlier in the stretch), with the bodies of loops and conditionals as nested scopes.
fn validate(s: &Stmt, defined: &mut Vec<bool>) -> Result<(), KirError> {
    let uses = |e: &Expr, defined: &Vec<bool>| -> Result<(), KirError> {
        let mut vars = Vec::new();
        vars_of(e, &mut vars);
        match vars
            .into_iter()
            .find(|v| !defined.get(v.0 as usize).copied().unwrap_or(false))
        {
            Some(v) => Err(KirError(format!(
                "v{} is used outside the scope or barrier-free stretch that binds it",
                v.0
            ))),
            None => Ok(()),
        }
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
        Stmt::AsyncCopy(copy) => {
            uses(&copy.dst.1, defined)?;
            uses(&copy.src.1, defined)?;
            uses(&copy.ok, defined)?;
        }
        Stmt::AsyncCommit | Stmt::AsyncWait(_) => {}
        Stmt::For(l) => {
            uses(&l.lo, defined)?;
            uses(&l.hi, defined)?;
            let mut inner = defined.clone();
            inner[l.var.0 as usize] = true;
            for s in &l.body {
                validate(s, &mut inner)?;
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
                    validate(s, &mut inner)?;
                }
            }
        }
        // Stretches hold no barriers or mmas: `steps` ends a stretch at each one.
        Stmt::Barrier | Stmt::Mma(_) => unreachable!("a barrier or mma inside a stretch"),
    }
    Ok(())
}

fn vars_of(e: &Expr, out: &mut Vec<Var>) {
    e.visit(&mut |x| {
        if let Expr::Var(v) = x {
            out.push(*v);
        }
    });
}

/// Whether `e` loads from one of the parameters `params`.
fn reads_any(e: &Expr, params: &[usize]) -> bool {
    e.any(&mut |x| matches!(x, Expr::Load(Buf::Param(p), _) if params.contains(p)))
}

/// Adds the parameters `s` stores to.
fn stores_of(s: &Stmt, out: &mut Vec<usize>) {
    match s {
        Stmt::Store(Buf::Param(p), ..) => out.push(*p),
        Stmt::For(l) => l.body.iter().for_each(|s| stores_of(s, out)),
        Stmt::If {
            then, otherwise, ..
        } => then.iter().chain(otherwise).for_each(|s| stores_of(s, out)),
        Stmt::Let(..)
        | Stmt::Store(..)
        | Stmt::Barrier
        | Stmt::Mma(_)
        | Stmt::AsyncCopy(_)
        | Stmt::AsyncCommit
        | Stmt::AsyncWait(_) => {}
    }
}
