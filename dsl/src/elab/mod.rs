//! Elaboration: runs a loaded program's network at compile time and builds the graph IR.
//!
//! Blocks are called like functions with their arguments bound by position or name; loops,
//! conditionals and arithmetic run at compile time; tensor operations add nodes to the
//! graph, each inferred (shape inference) as it is made so that a mismatch is reported at
//! the `.rfn` expression that caused it. Invariants of the result: every node's type is the
//! inferred one; parameter names are unique and follow the call scopes
//! (`refine4.adapt0.rcu1.conv2.weight`); every node's `loc` records its scope and span.

mod builtins;
mod env;
mod value;

use std::collections::HashMap;

use rfnc_compiler::ir::train_config::{pattern_matches, TrainConfig};
use rfnc_compiler::ir::{
    objective_terms, DType, Graph, Loc, NodeId, Op, Output, ParamKind, TensorType,
};

use crate::ast::*;
use crate::diagnostic::{Diagnostic, Result};
use crate::loader::Program;
use crate::suggest::did_you_mean;
use env::Env;
pub use value::Value;

/// Settings that fix a program's compile-time unknowns.
#[derive(Clone, Debug)]
pub struct Options {
    /// Dimensions of the network's first input (`--input NxCxHxW`).
    pub input: Vec<u64>,
    /// `-D name=value` overrides of `config` declarations, in command-line order.
    pub defines: Vec<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            input: vec![1, 3, 512, 512],
            defines: Vec::new(),
        }
    }
}

/// Limits that keep a runaway program (or a fuzzer's) from hanging the compiler.
/// Nested block calls, loop bodies and conditional bodies, together.
const MAX_CALL_DEPTH: usize = 64;
const MAX_STEPS: u64 = 2_000_000;
const MAX_STRING: usize = 1 << 20;
/// Elements visited by one `==` on lists or records.
const MAX_COMPARE: u64 = 1_000_000;
const MAX_NODES: usize = 2_000_000;
const MAX_LIST: usize = 1_000_000;
/// Largest tensor, in elements, that a program may describe (2^40).
const MAX_ELEMENTS: u64 = 1 << 40;

/// Elaborates the program's network into a graph.
pub fn elaborate(program: &Program, options: &Options) -> Result<Graph> {
    elaborate_with_training(program, options).map(|(graph, _)| graph)
}

/// Elaborates the program's network into a graph, with the training settings its network
/// declares (`sgd`, `lr_scale`, `freeze`; defaults otherwise).
pub fn elaborate_with_training(
    program: &Program,
    options: &Options,
) -> Result<(Graph, TrainConfig)> {
    let mut el = Elab::new(program)?;
    el.register_configs(options)?;
    let network = find_network(program)?;
    el.graph.name = network.name.name.clone();
    el.input_dims = Some(options.input.clone());
    let mut env = Env::new(None);
    if let Flow::Return(_, span) = el.exec(&mut env, &network.body)? {
        return Diagnostic::new("`return` is not allowed in a network")
            .label(span, "networks end with `output` statements")
            .err();
    }
    if el.graph.outputs.is_empty() {
        return Diagnostic::new(format!("network `{}` has no outputs", network.name.name))
            .label(network.name.span, "declares nothing to compute")
            .hint("add `output NAME = EXPR;` for each result")
            .err();
    }
    el.check_training_patterns()?;
    Ok((el.graph, el.training.config))
}

/// Training settings collected from the network body.
#[derive(Default)]
pub(crate) struct Training {
    pub config: TrainConfig,
    pub sgd_span: Option<Span>,
    /// Every `freeze` / `lr_scale` pattern with where it was written.
    pub pattern_spans: Vec<(String, Span)>,
}

fn find_network(program: &Program) -> Result<&NetworkDef> {
    let mut found: Option<&NetworkDef> = None;
    for item in &program.main_module().items {
        if let Item::Network(n) = item {
            if let Some(first) = found {
                return Diagnostic::new("a program has one network")
                    .label(n.name.span, "second network")
                    .label(first.name.span, "first network")
                    .hint("put each network in its own file; share blocks through `import`")
                    .err();
            }
            found = Some(n);
        }
    }
    for module in &program.modules {
        if module.file == program.main {
            continue;
        }
        if let Some(Item::Network(n)) = module.items.iter().find(|i| matches!(i, Item::Network(_)))
        {
            return Diagnostic::new("an imported file defines a network")
                .label(n.name.span, "networks belong in the main file")
                .hint("move the network out, or compile this file directly")
                .err();
        }
    }
    found.map_or_else(
        || {
            Diagnostic::new(format!(
                "`{}` defines no network",
                program.sources.file(program.main).name
            ))
            .hint("a program to compile needs `network NAME { input ...; output ... = ...; }`")
            .err()
        },
        Ok,
    )
}

pub(crate) enum Flow {
    Next,
    Return(Value, Span),
}

pub(crate) struct Elab<'p> {
    program: &'p Program,
    blocks: HashMap<&'p str, &'p BlockDef>,
    configs: HashMap<String, (Value, Span)>,
    pub(crate) graph: Graph,
    /// The span of the expression that made each tensor, for "where it came from" labels.
    origins: HashMap<NodeId, Span>,
    scope: Vec<String>,
    /// Where each parameter was made: the block-call spans leading to it, then the call itself.
    param_spans: HashMap<String, Vec<Span>>,
    /// Each parameter's node, for `as shared` calls that reuse it.
    param_ids: HashMap<String, NodeId>,
    /// How many `as shared` block calls are being elaborated.
    shared_depth: usize,
    /// Spans of the block calls being elaborated, outermost first.
    call_stack: Vec<Span>,
    output_spans: HashMap<String, Span>,
    objective_span: Option<Span>,
    next_stream: u64,
    /// Dimensions given on the command line, consumed by the first `input`.
    input_dims: Option<Vec<u64>>,
    symbols: HashMap<String, (u64, Span)>,
    depth: usize,
    steps: u64,
    pub(crate) training: Training,
}

impl<'p> Elab<'p> {
    /// Every `freeze` / `lr_scale` pattern must match a trainable parameter.
    fn check_training_patterns(&self) -> Result<()> {
        let names: Vec<&str> = self
            .graph
            .node_ids()
            .filter_map(|id| match &self.graph.node(id).op {
                Op::Param { name, kind } if kind.is_trainable() => Some(name.as_str()),
                _ => None,
            })
            .collect();
        for (pattern, span) in &self.training.pattern_spans {
            if !names.iter().any(|n| pattern_matches(pattern, n)) {
                let mut scopes: Vec<&str> = names
                    .iter()
                    .map(|n| n.split('.').next().unwrap_or(n))
                    .collect();
                scopes.dedup();
                let mut d = Diagnostic::new(format!("the pattern \"{pattern}\" matches no trainable parameter"))
                    .label(*span, "matches nothing")
                    .note("a pattern names a scope (`backbone` covers `backbone.conv1.weight`) or uses `*` (`*.bias`)");
                if let Some(s) = did_you_mean(pattern, scopes.iter().copied()) {
                    d = d.hint(format!("did you mean \"{s}\"?"));
                }
                return d.err();
            }
        }
        Ok(())
    }

    fn new(program: &'p Program) -> Result<Self> {
        let mut blocks: HashMap<&'p str, &'p BlockDef> = HashMap::new();
        for module in &program.modules {
            for item in &module.items {
                let Item::Block(b) = item else { continue };
                if builtins::lookup(&b.name.name).is_some() {
                    return Diagnostic::new(format!(
                        "block `{}` has the name of a built-in operation",
                        b.name.name
                    ))
                    .label(b.name.span, "choose another name")
                    .err();
                }
                if let Some(prev) = blocks.insert(&b.name.name, b) {
                    return Diagnostic::new(format!("block `{}` is defined twice", b.name.name))
                        .label(b.name.span, "second definition")
                        .label(prev.name.span, "first definition")
                        .err();
                }
            }
        }
        Ok(Elab {
            program,
            blocks,
            configs: HashMap::new(),
            graph: Graph::new(""),
            origins: HashMap::new(),
            scope: Vec::new(),
            param_spans: HashMap::new(),
            param_ids: HashMap::new(),
            shared_depth: 0,
            call_stack: Vec::new(),
            output_spans: HashMap::new(),
            objective_span: None,
            next_stream: 0,
            input_dims: None,
            symbols: HashMap::new(),
            depth: 0,
            steps: 0,
            training: Training::default(),
        })
    }

    fn register_configs(&mut self, options: &Options) -> Result<()> {
        let decls: Vec<&ConfigDecl> = self
            .program
            .modules
            .iter()
            .flat_map(|m| m.items.iter())
            .filter_map(|i| {
                if let Item::Config(c) = i {
                    Some(c)
                } else {
                    None
                }
            })
            .collect();
        for (name, _) in &options.defines {
            if !decls.iter().any(|d| d.name.name == *name) {
                let names: Vec<&str> = decls.iter().map(|d| d.name.name.as_str()).collect();
                let mut d =
                    Diagnostic::new(format!("-D {name}: the program has no config `{name}`"));
                if names.is_empty() {
                    d = d.hint("this program declares no `config` values");
                } else {
                    d = d.note(format!("the configs are: {}", names.join(", ")));
                    if let Some(s) = did_you_mean(name, names.iter().copied()) {
                        d = d.hint(format!("did you mean `{s}`?"));
                    }
                }
                return d.err();
            }
        }
        for decl in decls {
            if let Some((_, first)) = self.configs.get(&decl.name.name) {
                return Diagnostic::new(format!("config `{}` is declared twice", decl.name.name))
                    .label(decl.name.span, "second declaration")
                    .label(*first, "first declaration")
                    .err();
            }
            let mut env = Env::new(Some(format!("config `{}`", decl.name.name)));
            let value = match options
                .defines
                .iter()
                .rev()
                .find(|(n, _)| *n == decl.name.name)
            {
                Some((_, text)) => parse_define(decl, text)?,
                None => self.eval(&mut env, &decl.value, None)?,
            };
            let Some(value) = value.clone().conform(decl.ty.base, decl.ty.optional) else {
                return Diagnostic::new(format!(
                    "config `{}` is declared {} but its value is {}",
                    decl.name.name,
                    decl.ty,
                    value.describe(&self.graph)
                ))
                .label(decl.value.span, "this value")
                .label(decl.ty.span, "declared type")
                .err();
            };
            self.configs
                .insert(decl.name.name.clone(), (value, decl.name.span));
        }
        Ok(())
    }

    // ----- statements -------------------------------------------------------------------

    fn tick(&mut self, span: Span) -> Result<()> {
        self.steps += 1;
        if self.steps > MAX_STEPS || self.graph.len() > MAX_NODES {
            return Diagnostic::new("the program does too much work at compile time")
                .label(span, "stopped here")
                .note(format!(
                    "limits: {MAX_STEPS} statements and loop iterations, {MAX_NODES} graph nodes"
                ))
                .hint("check loop bounds and recursion")
                .err();
        }
        Ok(())
    }

    pub(crate) fn exec(&mut self, env: &mut Env, stmts: &[Stmt]) -> Result<Flow> {
        for stmt in stmts {
            self.tick(stmt.span)?;
            if let Flow::Return(v, s) = self.stmt(env, stmt)? {
                return Ok(Flow::Return(v, s));
            }
        }
        Ok(Flow::Next)
    }

    fn scoped(&mut self, env: &mut Env, stmts: &[Stmt]) -> Result<Flow> {
        self.enter(stmts.first().map(|s| s.span))?;
        env.push();
        let flow = self.exec(env, stmts);
        env.pop();
        self.depth -= 1;
        flow
    }

    /// Enters a nested body or call; the depth counts both, so that recursion through
    /// nested loops is bounded as well as plain recursion.
    fn enter(&mut self, span: Option<Span>) -> Result<()> {
        if self.depth >= MAX_CALL_DEPTH {
            let mut d = Diagnostic::new("blocks call each other too deeply")
                .note(format!(
                    "limit: {MAX_CALL_DEPTH} nested calls, loops and conditionals"
                ))
                .hint("a recursive block needs a condition that ends the recursion");
            if let Some(span) = span {
                d = d.label(span, "stopped here");
            }
            return d.err();
        }
        self.depth += 1;
        Ok(())
    }

    fn stmt(&mut self, env: &mut Env, stmt: &Stmt) -> Result<Flow> {
        match &stmt.kind {
            StmtKind::Let(name, e) => {
                let v = self.eval(env, e, Some(&name.name))?;
                self.define_new(env, name, v, "let")?;
            }
            StmtKind::Assign(name, e) => {
                let v = self.eval(env, e, Some(&name.name))?;
                if !env.assign(&name.name, v) {
                    let mut d = Diagnostic::new(format!(
                        "assignment to undefined variable `{}`",
                        name.name
                    ))
                    .label(name.span, "not defined");
                    d = if self.configs.contains_key(&name.name) {
                        d.hint(format!(
                            "`{}` is a config, which is constant; override it with -D {}=VALUE",
                            name.name, name.name
                        ))
                    } else {
                        d.hint(format!("declare it first: `let {} = ...;`", name.name))
                    };
                    return d.err();
                }
            }
            StmtKind::Expr(e) => {
                self.eval(env, e, None)?;
            }
            StmtKind::Return(e) => {
                if env.block_name().is_none() {
                    return Diagnostic::new("`return` is not allowed in a network")
                        .label(stmt.span, "networks end with `output` statements")
                        .err();
                }
                let v = self.eval(env, e, None)?;
                return Ok(Flow::Return(v, e.span));
            }
            StmtKind::Assert(cond, message) => {
                let v = self.eval(env, cond, None)?;
                let Value::Bool(ok) = v else {
                    return Diagnostic::new("`assert` needs a condition")
                        .label(
                            cond.span,
                            format!("this is {}, not a bool", v.describe(&self.graph)),
                        )
                        .err();
                };
                if !ok {
                    let title = message
                        .clone()
                        .unwrap_or_else(|| "assertion failed".to_string());
                    return Diagnostic::new(title)
                        .label(cond.span, "this condition is false")
                        .err();
                }
            }
            StmtKind::If {
                cond,
                then,
                otherwise,
            } => {
                let v = self.eval(env, cond, None)?;
                let Value::Bool(c) = v else {
                    return Diagnostic::new("`if` needs a condition")
                        .label(cond.span, format!("this is {}, not a bool", v.describe(&self.graph)))
                        .hint("conditions are compile-time bools, e.g. `if order == \"pool_conv\" { ... }`")
                        .err();
                };
                if c {
                    return self.scoped(env, then);
                } else if let Some(other) = otherwise {
                    return self.scoped(env, other);
                }
            }
            StmtKind::For { var, iter, body } => return self.for_loop(env, var, iter, body),
            StmtKind::Input { name, dtype, dims } => {
                self.input(env, stmt.span, name, *dtype, dims)?
            }
            StmtKind::Output(name, e) => {
                self.network_only(
                    env,
                    "output",
                    stmt.span,
                    "blocks return values; the network declares inputs, outputs and the objective",
                )?;
                let v = self.eval(env, e, Some(&name.name))?;
                let Value::Tensor(id) = v else {
                    return Diagnostic::new(format!("output `{}` must be a tensor", name.name))
                        .label(e.span, format!("this is {}", v.describe(&self.graph)))
                        .err();
                };
                self.add_output(name, id)?;
                self.define_new(env, name, v, "output")?;
            }
            StmtKind::Objective(name, e) => {
                self.network_only(
                    env,
                    "objective",
                    stmt.span,
                    "blocks return values; the network declares inputs, outputs and the objective",
                )?;
                if let Some(first) = self.objective_span {
                    return Diagnostic::new("a network has one objective")
                        .label(stmt.span, "second objective")
                        .label(first, "first objective")
                        .hint("train several losses as one weighted sum: `objective loss = seg + 0.5 * depth;` (each term is reported on its own)")
                        .err();
                }
                let v = self.eval(env, e, Some(&name.name))?;
                let terms = match v {
                    Value::Tensor(id) => objective_terms(&self.graph, id).map(|t| (id, t)),
                    _ => None,
                };
                let Some((id, terms)) = terms else {
                    return Diagnostic::new(format!(
                        "objective `{}` must be a loss or a weighted sum of losses",
                        name.name
                    ))
                    .label(e.span, format!("this is {}", v.describe(&self.graph)))
                    .hint(
                        "use softmax_cross_entropy(scores, labels) or least_squares(pred, target), or a sum of them weighted by numbers: `seg + 0.5 * depth`",
                    )
                    .err();
                };
                self.add_output(name, id)?;
                self.add_terms(env, name, id, &terms)?;
                self.graph.objective = Some(name.name.clone());
                self.objective_span = Some(stmt.span);
                self.define_new(env, name, v, "objective")?;
            }
        }
        Ok(Flow::Next)
    }
}

impl Elab<'_> {
    /// Makes every term of a weighted-sum objective an output (unless it is one already),
    /// named after the variable that holds it, else `<objective>_term<i>`: the training step
    /// reports each term beside the objective.
    fn add_terms(
        &mut self,
        env: &Env,
        objective: &Ident,
        root: NodeId,
        terms: &[NodeId],
    ) -> Result<()> {
        if terms == [root] {
            return Ok(());
        }
        for (i, &t) in terms.iter().enumerate() {
            if self.graph.outputs.iter().any(|o| o.value == t) {
                continue;
            }
            let var = env
                .names()
                .find(|n| matches!(env.get(n), Some(Value::Tensor(v)) if v == t));
            let name = var.map_or_else(|| format!("{}_term{i}", objective.name), str::to_string);
            if self.graph.output(&name).is_some() {
                continue;
            }
            let ident = Ident {
                name,
                span: objective.span,
            };
            self.add_output(&ident, t)?;
        }
        Ok(())
    }
}

impl<'p> Elab<'p> {
    /// Defines a new variable; a second definition in the same scope is an error.
    fn define_new(&self, env: &mut Env, name: &Ident, v: Value, what: &str) -> Result<()> {
        if let Some(prev) = env.declared_here(&name.name) {
            let hint = if what == "let" {
                format!(
                    "to change a variable, assign without `let`: `{} = ...;`",
                    name.name
                )
            } else {
                format!("give the {what} a name of its own")
            };
            return Diagnostic::new(format!("`{}` is already defined in this scope", name.name))
                .label(name.span, "defined again here")
                .label(prev, "first defined here")
                .hint(hint)
                .err();
        }
        env.define(&name.name, v, name.span);
        Ok(())
    }

    /// Declarations and settings that belong to the network body, with a hint saying why.
    fn network_only(&self, env: &Env, what: &str, span: Span, hint: &str) -> Result<()> {
        match env.block_name() {
            Some(block) => Diagnostic::new(format!("`{what}` is only allowed in a network"))
                .label(span, format!("inside {block}"))
                .hint(hint)
                .err(),
            None => Ok(()),
        }
    }

    fn add_output(&mut self, name: &Ident, id: NodeId) -> Result<()> {
        if let Some(first) = self.output_spans.insert(name.name.clone(), name.span) {
            return Diagnostic::new(format!("output `{}` is declared twice", name.name))
                .label(name.span, "second declaration")
                .label(first, "first declaration")
                .err();
        }
        self.graph.outputs.push(Output {
            name: name.name.clone(),
            value: id,
        });
        Ok(())
    }

    fn for_loop(
        &mut self,
        env: &mut Env,
        var: &Ident,
        iter: &ForIter,
        body: &[Stmt],
    ) -> Result<Flow> {
        let items: Box<dyn Iterator<Item = Value>> = match iter {
            ForIter::Range(lo, hi) => {
                let a = self.int(env, lo, "a range start")?;
                let b = self.int(env, hi, "a range end")?;
                Box::new((a..b).map(Value::Int))
            }
            ForIter::Each(e) => match self.eval(env, e, None)? {
                Value::List(items) => Box::new(items.as_ref().clone().into_iter()),
                other => {
                    return Diagnostic::new("`for` iterates over a range or a list")
                        .label(e.span, format!("this is {}", other.describe(&self.graph)))
                        .hint("write `for i in 0..n { ... }` or `for x in xs { ... }`")
                        .err()
                }
            },
        };
        for item in items {
            self.tick(var.span)?;
            self.enter(Some(var.span))?;
            env.push();
            env.define(&var.name, item, var.span);
            let flow = self.exec(env, body);
            env.pop();
            self.depth -= 1;
            if let Flow::Return(v, s) = flow? {
                return Ok(Flow::Return(v, s));
            }
        }
        Ok(Flow::Next)
    }

    fn input(
        &mut self,
        env: &mut Env,
        span: Span,
        name: &Ident,
        dtype: ElemType,
        dims: &[Dim],
    ) -> Result<()> {
        self.network_only(
            env,
            "input",
            span,
            "blocks return values; the network declares inputs, outputs and the objective",
        )?;
        let given = self.input_dims.take();
        let mut shape = Vec::with_capacity(dims.len());
        if let Some(given) = &given {
            if given.len() != dims.len() {
                return Diagnostic::new(format!(
                    "--input has {} dimensions but `{}` is declared with {}",
                    given.len(),
                    name.name,
                    dims.len()
                ))
                .label(span, "the first input takes its shape from --input")
                .hint(format!(
                    "give {} sizes separated by `x`, e.g. --input {}",
                    dims.len(),
                    example_shape(dims)
                ))
                .err();
            }
        }
        for (i, dim) in dims.iter().enumerate() {
            let size = match (dim, &given) {
                (Dim::Fixed(v, dspan), Some(g)) => {
                    if g[i] != *v {
                        return Diagnostic::new(format!(
                            "--input gives {} for dimension {i} of `{}`, which is declared {v}",
                            g[i], name.name
                        ))
                        .label(*dspan, format!("declared {v} here"))
                        .err();
                    }
                    *v
                }
                (Dim::Fixed(v, _), None) => *v,
                (Dim::Symbol(sym), Some(g)) => {
                    if let Some((bound, first)) = self.symbols.get(&sym.name) {
                        if *bound != g[i] {
                            return Diagnostic::new(format!(
                                "--input gives {} for `{}`, which is already {bound}",
                                g[i], sym.name
                            ))
                            .label(sym.span, format!("`{}` = {}", sym.name, g[i]))
                            .label(*first, format!("`{}` = {bound}", sym.name))
                            .err();
                        }
                    }
                    self.symbols.insert(sym.name.clone(), (g[i], sym.span));
                    // The network body may compute with the sizes (`H / 4`); a variable of
                    // the same name keeps its own value.
                    if env.get(&sym.name).is_none() {
                        env.define(&sym.name, Value::Int(g[i] as i64), sym.span);
                    }
                    g[i]
                }
                (Dim::Expr(e), Some(_)) => {
                    return Diagnostic::new(format!(
                        "the sizes of `{}`, the first input, come from --input",
                        name.name
                    ))
                    .label(e.span, "an expression here")
                    .hint("declare the first input with numbers and symbols (e.g. f32[N, 3, H, W]); later inputs may compute sizes from them")
                    .err()
                }
                (Dim::Expr(e), None) => self.size_expr(env, e)?,
                (Dim::Symbol(sym), None) => match self.symbols.get(&sym.name) {
                    Some((v, _)) => *v,
                    None => {
                        return Diagnostic::new(format!("size `{}` is not known", sym.name))
                            .label(sym.span, "not fixed by the first input")
                            .hint("symbolic sizes are fixed by --input through the first `input`; use the same names there")
                            .err()
                    }
                },
            };
            if size == 0 {
                return Diagnostic::new(format!("input `{}` has an empty dimension", name.name))
                    .label(span, "every size must be at least 1")
                    .err();
            }
            shape.push(size);
        }
        let dtype = match dtype {
            ElemType::F32 => DType::F32,
            ElemType::I32 => DType::I32,
        };
        let ty = TensorType::new(dtype, shape);
        self.check_size(&ty, span)?;
        if let Some(first) = self
            .graph
            .node_ids()
            .find(|&id| matches!(&self.graph.node(id).op, Op::Input { name: n } if *n == name.name))
        {
            let mut d = Diagnostic::new(format!("input `{}` is declared twice", name.name))
                .label(name.span, "second declaration");
            if let Some(&origin) = self.origins.get(&first) {
                d = d.label(origin, "first declaration");
            }
            return d.err();
        }
        let loc = self.loc(span, None);
        if env.declared_here(&name.name).is_some() {
            return self.define_new(env, name, Value::None, "input");
        }
        let id = self.graph.add(
            Op::Input {
                name: name.name.clone(),
            },
            &[],
            ty,
            loc,
        );
        self.origins.insert(id, name.span);
        env.define(&name.name, Value::Tensor(id), name.span);
        Ok(())
    }

    // ----- expressions ------------------------------------------------------------------

    /// A size computed from the symbols of the first input (`N`, `H`, `W`, ...) and the
    /// configs, e.g. `H / 4`; at least 1.
    fn size_expr(&mut self, env: &mut Env, e: &Expr) -> Result<u64> {
        env.push();
        for (name, (value, span)) in &self.symbols {
            env.define(name, Value::Int(*value as i64), *span);
        }
        let v = self.int(env, e, "a size");
        env.pop();
        match v? {
            v if v >= 1 => Ok(v as u64),
            v => Diagnostic::new(format!("this size is {v}"))
                .label(e.span, "every size must be at least 1")
                .err(),
        }
    }

    fn int(&mut self, env: &mut Env, e: &Expr, what: &str) -> Result<i64> {
        match self.eval(env, e, None)? {
            Value::Int(v) => Ok(v),
            other => Diagnostic::new(format!("expected an int for {what}"))
                .label(e.span, format!("this is {}", other.describe(&self.graph)))
                .err(),
        }
    }

    /// Evaluates an expression. `hint` is the variable a call's result is bound to, which
    /// names the call's scope when it has no `as`.
    pub(crate) fn eval(&mut self, env: &mut Env, e: &Expr, hint: Option<&str>) -> Result<Value> {
        Ok(match &e.kind {
            ExprKind::Int(v) => Value::Int(*v),
            ExprKind::Float(v) => Value::Float(*v),
            ExprKind::Str(s) => Value::Str(s.as_str().into()),
            ExprKind::Bool(b) => Value::Bool(*b),
            ExprKind::None => Value::None,
            ExprKind::Var(name) => match env.get(name) {
                Some(v) => v,
                None => match self.configs.get(name) {
                    Some((v, _)) => v.clone(),
                    None => return self.unknown_variable(env, name, e.span),
                },
            },
            ExprKind::List(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    out.push(self.eval(env, item, None)?);
                }
                Value::List(out.into())
            }
            ExprKind::Record(fields) => {
                let mut out: Vec<(String, Value)> = Vec::with_capacity(fields.len());
                for (name, value) in fields {
                    if out.iter().any(|(n, _)| *n == name.name) {
                        return Diagnostic::new(format!("field `{}` is given twice", name.name))
                            .label(name.span, "repeated field")
                            .err();
                    }
                    out.push((name.name.clone(), self.eval(env, value, None)?));
                }
                Value::Record(out.into())
            }
            ExprKind::Index(base, index) => {
                let b = self.eval(env, base, None)?;
                let i = self.eval(env, index, None)?;
                match (&b, &i) {
                    (Value::List(items), Value::Int(k)) => match usize::try_from(*k)
                        .ok()
                        .and_then(|k| items.get(k))
                    {
                        Some(v) => v.clone(),
                        None => {
                            return Diagnostic::new(format!("index {k} is out of range"))
                                .label(index.span, format!("the list has {} items", items.len()))
                                .err()
                        }
                    },
                    (Value::List(_), other) => {
                        return Diagnostic::new("list index must be an int")
                            .label(
                                index.span,
                                format!("this is {}", other.describe(&self.graph)),
                            )
                            .err()
                    }
                    (other, _) => {
                        return Diagnostic::new("only lists can be indexed")
                            .label(
                                base.span,
                                format!("this is {}", other.describe(&self.graph)),
                            )
                            .err()
                    }
                }
            }
            ExprKind::Field(base, field) => {
                let b = self.eval(env, base, None)?;
                let Value::Record(fields) = &b else {
                    return Diagnostic::new(format!("`.{}` needs a record", field.name))
                        .label(base.span, format!("this is {}", b.describe(&self.graph)))
                        .err();
                };
                match fields.iter().find(|(n, _)| *n == field.name) {
                    Some((_, v)) => v.clone(),
                    None => {
                        let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
                        let mut d =
                            Diagnostic::new(format!("the record has no field `{}`", field.name))
                                .label(field.span, "unknown field")
                                .note(format!("its fields are: {}", names.join(", ")));
                        if let Some(s) = did_you_mean(&field.name, names.iter().copied()) {
                            d = d.hint(format!("did you mean `{s}`?"));
                        }
                        return d.err();
                    }
                }
            }
            ExprKind::Unary(op, inner) => {
                let v = self.eval(env, inner, None)?;
                match (op, v) {
                    (UnOp::Neg, Value::Int(x)) => {
                        Value::Int(x.checked_neg().ok_or_else(|| overflow(e.span))?)
                    }
                    (UnOp::Neg, Value::Float(x)) => Value::Float(-x),
                    (UnOp::Not, Value::Bool(b)) => Value::Bool(!b),
                    (op, v) => {
                        let what = if *op == UnOp::Neg {
                            "`-` needs a number"
                        } else {
                            "`not` needs a bool"
                        };
                        return Diagnostic::new(what)
                            .label(inner.span, format!("this is {}", v.describe(&self.graph)))
                            .err();
                    }
                }
            }
            ExprKind::Binary(op, l, r) => self.binary(env, *op, l, r, e.span)?,
            ExprKind::Call { callee, args, name } => {
                self.call(env, callee, args, name.as_ref(), hint, e.span)?
            }
        })
    }

    fn unknown_variable(&self, env: &Env, name: &str, span: Span) -> Result<Value> {
        let mut d =
            Diagnostic::new(format!("unknown name `{name}`")).label(span, "not defined here");
        let candidates = env.names().chain(self.configs.keys().map(String::as_str));
        if let Some(s) = did_you_mean(name, candidates) {
            d = d.hint(format!("did you mean `{s}`?"));
        } else if self.blocks.contains_key(name) || builtins::lookup(name).is_some() {
            d = d.hint(format!("`{name}` is a block; call it: `{name}(...)`"));
        }
        d.err()
    }

    fn binary(
        &mut self,
        env: &mut Env,
        op: BinOp,
        l: &Expr,
        r: &Expr,
        span: Span,
    ) -> Result<Value> {
        let lv = self.eval(env, l, None)?;
        // `and` / `or` short-circuit.
        if let (BinOp::And | BinOp::Or, Value::Bool(a)) = (op, &lv) {
            if (op == BinOp::And && !a) || (op == BinOp::Or && *a) {
                return Ok(Value::Bool(*a));
            }
            return match self.eval(env, r, None)? {
                Value::Bool(b) => Ok(Value::Bool(b)),
                other => Diagnostic::new(format!("`{}` needs bools", op.symbol()))
                    .label(r.span, format!("this is {}", other.describe(&self.graph)))
                    .err(),
            };
        }
        let rv = self.eval(env, r, None)?;
        let result = match (op, &lv, &rv) {
            (BinOp::Eq | BinOp::Ne, a, b) => {
                let mut budget = MAX_COMPARE;
                let Some(equal) = a.same(b, &mut budget) else {
                    return Diagnostic::new("this comparison is too large")
                        .label(span, format!("more than {MAX_COMPARE} elements to compare"))
                        .err();
                };
                Some(Value::Bool(equal == (op == BinOp::Eq)))
            }
            (BinOp::Add, Value::Tensor(a), Value::Tensor(b)) => {
                let id = self.emit(Op::Add, &[*a, *b], span, &[l.span, r.span])?;
                Some(Value::Tensor(id))
            }
            (BinOp::Mul, Value::Tensor(a), Value::Tensor(b)) => {
                let id = self.emit(Op::Mul, &[*a, *b], span, &[l.span, r.span])?;
                Some(Value::Tensor(id))
            }
            (BinOp::Mul, Value::Int(_) | Value::Float(_), Value::Tensor(t))
            | (BinOp::Mul, Value::Tensor(t), Value::Int(_) | Value::Float(_)) => {
                let (number, number_span, tensor_span) = match lv {
                    Value::Tensor(_) => (as_f64(&rv), r.span, l.span),
                    _ => (as_f64(&lv), l.span, r.span),
                };
                let c = self.emit(Op::Constant { value: number }, &[], number_span, &[])?;
                let id = self.emit(Op::Mul, &[c, *t], span, &[number_span, tensor_span])?;
                Some(Value::Tensor(id))
            }
            (BinOp::Add, Value::List(a), Value::List(b)) => {
                if a.len() + b.len() > MAX_LIST {
                    return Diagnostic::new("list is too long")
                        .label(span, format!("more than {MAX_LIST} items"))
                        .err();
                }
                Some(Value::List(
                    a.iter().chain(b.iter()).cloned().collect::<Vec<_>>().into(),
                ))
            }
            (BinOp::Add, Value::Str(a), Value::Str(b)) => {
                if a.len() + b.len() > MAX_STRING {
                    return Diagnostic::new("string is too long")
                        .label(span, format!("more than {MAX_STRING} bytes"))
                        .err();
                }
                Some(Value::Str(format!("{a}{b}").into()))
            }
            (_, Value::Int(a), Value::Int(b)) => Some(self.int_arith(op, *a, *b, r.span, span)?),
            (_, Value::Int(_) | Value::Float(_), Value::Int(_) | Value::Float(_)) => {
                let (a, b) = (as_f64(&lv), as_f64(&rv));
                let finite = |v: f64| -> Result<Option<Value>> {
                    if v.is_finite() {
                        Ok(Some(Value::Float(v)))
                    } else {
                        Diagnostic::new("the result is not a finite number")
                            .label(
                                span,
                                format!(
                                    "{} {} {} = {v}",
                                    format_number(a),
                                    op.symbol(),
                                    format_number(b)
                                ),
                            )
                            .err()
                    }
                };
                match op {
                    BinOp::Add => finite(a + b)?,
                    BinOp::Sub => finite(a - b)?,
                    BinOp::Mul => finite(a * b)?,
                    BinOp::Div => finite(a / b)?,
                    BinOp::Rem => finite(a - b * (a / b).floor())?,
                    BinOp::Lt => Some(Value::Bool(a < b)),
                    BinOp::Le => Some(Value::Bool(a <= b)),
                    BinOp::Gt => Some(Value::Bool(a > b)),
                    BinOp::Ge => Some(Value::Bool(a >= b)),
                    _ => None,
                }
            }
            (BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge, Value::Str(a), Value::Str(b)) => {
                Some(Value::Bool(match op {
                    BinOp::Lt => a < b,
                    BinOp::Le => a <= b,
                    BinOp::Gt => a > b,
                    _ => a >= b,
                }))
            }
            _ => None,
        };
        match result {
            Some(v) => Ok(v),
            None => {
                let mut d = Diagnostic::new(format!(
                    "`{}` cannot combine {} and {}",
                    op.symbol(),
                    lv.describe(&self.graph),
                    rv.describe(&self.graph)
                ))
                .label(l.span, lv.describe(&self.graph))
                .label(r.span, rv.describe(&self.graph));
                if matches!(lv, Value::Tensor(_)) || matches!(rv, Value::Tensor(_)) {
                    d = d.hint("tensors support `+` (the elementwise sum of equal shapes) and `*` (the elementwise product, with `mul`'s broadcasting, or a number times a tensor); other tensor maths is done by built-in operations such as conv and relu");
                }
                d.err()
            }
        }
    }

    fn int_arith(&self, op: BinOp, a: i64, b: i64, rspan: Span, span: Span) -> Result<Value> {
        let zero = || {
            Diagnostic::new("division by zero")
                .label(rspan, "this is 0")
                .err()
        };
        let v = match op {
            BinOp::Add => a.checked_add(b),
            BinOp::Sub => a.checked_sub(b),
            BinOp::Mul => a.checked_mul(b),
            BinOp::Div if b == 0 => return zero(),
            BinOp::Rem if b == 0 => return zero(),
            // Floor division and modulo (the remainder has the divisor's sign), as in Python.
            BinOp::Div => a.checked_div(b).map(|q| {
                if (a % b != 0) && ((a < 0) != (b < 0)) {
                    q - 1
                } else {
                    q
                }
            }),
            BinOp::Rem => a.checked_rem(b).map(|r| {
                if r != 0 && ((r < 0) != (b < 0)) {
                    r + b
                } else {
                    r
                }
            }),
            BinOp::Lt => return Ok(Value::Bool(a < b)),
            BinOp::Le => return Ok(Value::Bool(a <= b)),
            BinOp::Gt => return Ok(Value::Bool(a > b)),
            BinOp::Ge => return Ok(Value::Bool(a >= b)),
            BinOp::Eq | BinOp::Ne | BinOp::And | BinOp::Or => {
                return Diagnostic::new(format!("`{}` needs bools", op.symbol()))
                    .label(span, "these are ints")
                    .err()
            }
        };
        v.map(Value::Int).ok_or_else(|| overflow(span))
    }

    // ----- calls ------------------------------------------------------------------------

    fn call(
        &mut self,
        env: &mut Env,
        callee: &Ident,
        args: &[Arg],
        name: Option<&CallName>,
        hint: Option<&str>,
        span: Span,
    ) -> Result<Value> {
        let mut actuals = Vec::with_capacity(args.len());
        for arg in args {
            let v = self.eval(env, &arg.value, None)?;
            actuals.push(Actual {
                name: arg.name.clone(),
                value: v,
                span: arg.value.span,
            });
        }
        let segment = match name {
            Some(n) => {
                let mut s = n.base.name.clone();
                if let Some(index) = &n.index {
                    let i = self.int(env, index, "a name index")?;
                    if i < 0 {
                        return Diagnostic::new("a name index must not be negative")
                            .label(index.span, format!("this is {i}"))
                            .err();
                    }
                    s.push_str(&i.to_string());
                }
                Some(s)
            }
            None => None,
        };
        if let Some(block) = self.blocks.get(callee.name.as_str()).copied() {
            let segment = segment
                .or(hint.map(str::to_string))
                .unwrap_or_else(|| callee.name.clone());
            let shared = name.is_some_and(|n| n.shared);
            self.call_stack.push(span);
            self.shared_depth += usize::from(shared);
            let result = self.call_block(block, actuals, segment, span);
            self.shared_depth -= usize::from(shared);
            self.call_stack.pop();
            return result.map_err(|mut d| {
                if d.labels.len() < 8 && !d.labels.iter().any(|l| l.span == span) {
                    d.labels.push(crate::diagnostic::Label {
                        span,
                        message: format!("in `{}`, called here", callee.name),
                    });
                }
                d
            });
        }
        if let Some(builtin) = builtins::lookup(&callee.name) {
            if builtins::TRAINING_SETTINGS.contains(&builtin.name) {
                let hint = "training settings belong to the network: move this call into its body";
                self.network_only(env, &callee.name, span, hint)?;
            }
            if let (Some(n), false) = (name, builtin.creates_params) {
                return Diagnostic::new(format!(
                    "`{}` creates no parameters, so it cannot be named",
                    callee.name
                ))
                .label(n.span, "remove this `as`")
                .note("`as NAME` names the scope of a block call or a conv/batchnorm's parameters")
                .err();
            }
            let segment = segment
                .or(hint.map(str::to_string))
                .unwrap_or_else(|| callee.name.clone());
            let formals: Vec<Formal> = builtin
                .params
                .iter()
                .map(|p| Formal {
                    name: p.name,
                    decl: None,
                })
                .collect();
            let bound = self.bind(&callee.name, &formals, actuals, span, builtin.signature())?;
            let mut values = Vec::with_capacity(bound.len());
            for (param, slot) in builtin.params.iter().zip(bound) {
                let (v, vspan) = match slot {
                    Some((v, s)) => (v, s),
                    None => match param.default.value() {
                        Some(v) => (v, span),
                        None => {
                            return Diagnostic::new(format!(
                                "`{}` needs the argument `{}`",
                                callee.name, param.name
                            ))
                            .label(span, format!("`{}` is missing", param.name))
                            .note(format!("signature: {}", builtin.signature()))
                            .err()
                        }
                    },
                };
                let Some(v) = v.clone().conform(param.base, param.optional) else {
                    return Diagnostic::new(format!(
                        "argument `{}` of `{}` must be {}",
                        param.name,
                        callee.name,
                        type_phrase(param.base, param.optional)
                    ))
                    .label(vspan, format!("this is {}", v.describe(&self.graph)))
                    .note(format!("signature: {}", builtin.signature()))
                    .err();
                };
                values.push((v, vspan));
            }
            let shared = usize::from(name.is_some_and(|n| n.shared));
            self.shared_depth += shared;
            let result = builtins::apply(self, builtin, values, &segment, span);
            self.shared_depth -= shared;
            return result;
        }
        let mut d = Diagnostic::new(format!("unknown block `{}`", callee.name))
            .label(callee.span, "not defined");
        let mut candidates: Vec<&str> = self.blocks.keys().copied().collect();
        for n in builtins::names() {
            candidates.push(n);
        }
        if let Some(module) = crate::stdlib::module_defining(&callee.name) {
            d = d.hint(format!(
                "`{}` is in the standard library: add `import std.{module};`",
                callee.name
            ));
        } else if let Some(s) = did_you_mean(&callee.name, candidates.into_iter()) {
            d = d.hint(format!("did you mean `{s}`?"));
        }
        d.err()
    }

    fn call_block(
        &mut self,
        block: &'p BlockDef,
        actuals: Vec<Actual>,
        segment: String,
        span: Span,
    ) -> Result<Value> {
        if self.depth >= MAX_CALL_DEPTH {
            return Diagnostic::new("blocks call each other too deeply")
                .label(span, format!("more than {MAX_CALL_DEPTH} nested calls"))
                .hint("a recursive block needs a condition that ends the recursion")
                .err();
        }
        let formals: Vec<Formal> = block
            .params
            .iter()
            .map(|p| Formal {
                name: p.name.name.as_str(),
                decl: Some(p.name.span),
            })
            .collect();
        let signature = block_signature(block);
        let bound = self.bind(&block.name.name, &formals, actuals, span, signature.clone())?;
        let mut callee_env = Env::new(Some(format!("block `{}`", block.name.name)));
        for (param, slot) in block.params.iter().zip(bound) {
            let (v, vspan) = match slot {
                Some(pair) => pair,
                None => match &param.default {
                    Some(default) => (self.eval(&mut callee_env, default, None)?, default.span),
                    None => {
                        return Diagnostic::new(format!(
                            "`{}` needs the argument `{}`",
                            block.name.name, param.name.name
                        ))
                        .label(span, format!("`{}` is missing", param.name.name))
                        .label(param.span, "declared here")
                        .note(format!("signature: {signature}"))
                        .err()
                    }
                },
            };
            let Some(v) = v.clone().conform(param.ty.base, param.ty.optional) else {
                return Diagnostic::new(format!(
                    "argument `{}` of `{}` must be {}",
                    param.name.name,
                    block.name.name,
                    type_phrase(param.ty.base, param.ty.optional)
                ))
                .label(vspan, format!("this is {}", v.describe(&self.graph)))
                .label(param.ty.span, "declared here")
                .err();
            };
            callee_env.define(&param.name.name, v, param.name.span);
        }
        self.scope.push(segment);
        self.depth += 1;
        let flow = self.exec(&mut callee_env, &block.body);
        self.depth -= 1;
        self.scope.pop();
        let result = match flow? {
            Flow::Return(v, s) => Some((v, s)),
            Flow::Next => None,
        };
        match (&block.ret, result) {
            (None, None) => Ok(Value::None),
            (None, Some((v, _))) => Ok(v),
            (Some(ty), None) => Diagnostic::new(format!(
                "block `{}` ends without returning a {}",
                block.name.name, ty
            ))
            .label(block.name.span, "no `return` reached")
            .label(ty.span, "declared return type")
            .err(),
            (Some(ty), Some((v, s))) => match v.clone().conform(ty.base, ty.optional) {
                Some(v) => Ok(v),
                None => Diagnostic::new(format!(
                    "block `{}` returns {} but is declared to return {}",
                    block.name.name,
                    v.describe(&self.graph),
                    type_phrase(ty.base, ty.optional)
                ))
                .label(s, "returned here")
                .label(ty.span, "declared return type")
                .err(),
            },
        }
    }

    /// Matches actual arguments to formal parameters by position, then by name.
    fn bind(
        &self,
        callee: &str,
        formals: &[Formal],
        actuals: Vec<Actual>,
        call_span: Span,
        signature: String,
    ) -> Result<Vec<Option<(Value, Span)>>> {
        let mut slots: Vec<Option<(Value, Span)>> = vec![None; formals.len()];
        let mut seen_named = false;
        for (pos, actual) in actuals.into_iter().enumerate() {
            let index = match &actual.name {
                None => {
                    if seen_named {
                        return Diagnostic::new("positional argument after a named one")
                            .label(actual.span, "give this one a name too")
                            .note(format!("signature: {signature}"))
                            .err();
                    }
                    if pos >= formals.len() {
                        return Diagnostic::new(format!(
                            "`{callee}` takes {} argument{}, but more were given",
                            formals.len(),
                            if formals.len() == 1 { "" } else { "s" }
                        ))
                        .label(actual.span, "extra argument")
                        .label(call_span, "in this call")
                        .note(format!("signature: {signature}"))
                        .err();
                    }
                    pos
                }
                Some(n) => {
                    seen_named = true;
                    match formals.iter().position(|f| f.name == n.name) {
                        Some(i) => i,
                        None => {
                            let mut d = Diagnostic::new(format!(
                                "`{callee}` has no parameter `{}`",
                                n.name
                            ))
                            .label(n.span, "unknown parameter")
                            .note(format!("signature: {signature}"));
                            if let Some(s) = did_you_mean(&n.name, formals.iter().map(|f| f.name)) {
                                d = d.hint(format!("did you mean `{s}`?"));
                            }
                            return d.err();
                        }
                    }
                }
            };
            if let Some((_, first)) = &slots[index] {
                let mut d = Diagnostic::new(format!(
                    "argument `{}` of `{callee}` is given twice",
                    formals[index].name
                ))
                .label(actual.span, "second value")
                .label(*first, "first value");
                if let Some(decl) = formals[index].decl {
                    d = d.label(decl, "parameter declared here");
                }
                return d.err();
            }
            slots[index] = Some((actual.value, actual.span));
        }
        Ok(slots)
    }

    // ----- graph building ---------------------------------------------------------------

    fn loc(&self, span: Span, segment: Option<&str>) -> Loc {
        let mut scope = self.scope.join(".");
        if let Some(seg) = segment {
            if !scope.is_empty() {
                scope.push('.');
            }
            scope.push_str(seg);
        }
        Loc {
            scope,
            pos: Some(self.program.sources.position(span)),
        }
    }

    fn check_size(&self, ty: &TensorType, span: Span) -> Result<()> {
        let elements = ty.dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
        match elements {
            Some(n) if n <= MAX_ELEMENTS => Ok(()),
            _ => Diagnostic::new(format!("tensor {} is too large", ty.shape_string()))
                .label(span, "more than 2^40 elements")
                .err(),
        }
    }

    /// Adds an op whose type is inferred; a shape error points at `span` and at where each
    /// offending operand was made (`operand_spans`, or the operands' origins).
    pub(crate) fn emit(
        &mut self,
        op: Op,
        operands: &[NodeId],
        span: Span,
        operand_spans: &[Span],
    ) -> Result<NodeId> {
        self.emit_scoped(op, operands, span, operand_spans, None)
    }

    pub(crate) fn emit_scoped(
        &mut self,
        op: Op,
        operands: &[NodeId],
        span: Span,
        operand_spans: &[Span],
        segment: Option<&str>,
    ) -> Result<NodeId> {
        let loc = self.loc(span, segment);
        match self.graph.add_inferred(op, operands, loc) {
            Ok(id) => {
                let ty = self.graph.node(id).ty.clone();
                self.check_size(&ty, span)?;
                self.origins.insert(id, span);
                Ok(id)
            }
            Err(e) => {
                let mut d = Diagnostic::new(e.message).label(span, "in this operation");
                for &i in &e.operands {
                    let Some(&node) = operands.get(i) else {
                        continue;
                    };
                    let shape = self.graph.node(node).ty.shape_string();
                    if let Some(&s) = operand_spans.get(i) {
                        d = d.label(s, format!("this is {shape}"));
                    }
                    if let Some(&origin) = self.origins.get(&node) {
                        if Some(&origin) != operand_spans.get(i) && origin != span {
                            d = d.label(origin, format!("{shape} made here"));
                        }
                    }
                }
                d.err()
            }
        }
    }

    /// Creates a named parameter under the current scope: `<scope>.<segment>.<suffix>`.
    pub(crate) fn param(
        &mut self,
        segment: &str,
        suffix: &str,
        kind: ParamKind,
        dims: Vec<u64>,
        span: Span,
    ) -> Result<NodeId> {
        let loc = self.loc(span, Some(segment));
        let name = format!("{}.{suffix}", loc.scope);
        let mut path = self.call_stack.clone();
        path.push(span);
        if let Some(&existing) = self.param_ids.get(&name).filter(|_| self.shared_depth > 0) {
            let have = &self.graph.node(existing).ty.dims;
            if *have != dims {
                return Diagnostic::new(format!(
                    "shared parameter `{name}` is {dims:?} here but {have:?} where it was made"
                ))
                .label(
                    span,
                    "a shared call must make parameters of the same shapes",
                )
                .err();
            }
            return Ok(existing);
        }
        if let Some(first) = self.param_spans.get(&name) {
            // Point at the outermost calls that differ: the ones the user named alike.
            let differ = path.iter().zip(first).position(|(a, b)| a != b);
            let d = Diagnostic::new(format!("parameter `{name}` is defined twice"));
            let d = match differ {
                Some(i) => d
                    .label(path[i], "defined again by this call")
                    .label(first[i], "first defined by this call")
                    .hint("give the calls different names with `as NAME`, or reuse the first call's parameters with `as shared NAME`"),
                None => d
                    .label(span, "this call runs more than once and makes the same name each time")
                    .note("a call is named by `as NAME`, else by the variable it is assigned to, else by the callee")
                    .hint("in a loop, name each call with `as NAME[i]`"),
            };
            return d.err();
        }
        let ty = TensorType::f32(dims);
        self.check_size(&ty, span)?;
        self.param_spans.insert(name.clone(), path);
        let id = self.graph.add(
            Op::Param {
                name: name.clone(),
                kind,
            },
            &[],
            ty,
            loc,
        );
        self.param_ids.insert(name, id);
        self.origins.insert(id, span);
        Ok(id)
    }

    pub(crate) fn next_stream(&mut self) -> u64 {
        self.next_stream += 1;
        self.next_stream - 1
    }
}

pub(crate) struct Actual {
    name: Option<Ident>,
    value: Value,
    span: Span,
}

struct Formal<'a> {
    name: &'a str,
    decl: Option<Span>,
}

fn format_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.1}")
    } else if v.abs() >= 1e15 || (v != 0.0 && v.abs() < 1e-4) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

fn as_f64(v: &Value) -> f64 {
    match v {
        Value::Int(i) => *i as f64,
        Value::Float(f) => *f,
        _ => f64::NAN,
    }
}

fn overflow(span: Span) -> Box<Diagnostic> {
    Box::new(Diagnostic::new("integer overflow").label(span, "the result does not fit in 64 bits"))
}

pub(crate) fn type_phrase(base: BaseType, optional: bool) -> String {
    let article = if matches!(base, BaseType::Int) {
        "an"
    } else {
        "a"
    };
    let mut s = format!("{article} {}", base.name());
    if optional {
        s.push_str(" or none");
    }
    s
}

fn block_signature(block: &BlockDef) -> String {
    let params: Vec<String> = block
        .params
        .iter()
        .map(|p| match &p.default {
            Some(_) => format!("{}: {} = ...", p.name.name, p.ty),
            None => format!("{}: {}", p.name.name, p.ty),
        })
        .collect();
    let ret = block
        .ret
        .as_ref()
        .map(|t| format!(" -> {t}"))
        .unwrap_or_default();
    format!("{}({}){ret}", block.name.name, params.join(", "))
}

fn example_shape(dims: &[Dim]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .enumerate()
        .map(|(i, d)| match d {
            Dim::Fixed(v, _) => v.to_string(),
            Dim::Symbol(_) if i == 0 => "1".to_string(),
            Dim::Symbol(_) | Dim::Expr(_) => "64".to_string(),
        })
        .collect();
    parts.join("x")
}

fn parse_define(decl: &ConfigDecl, text: &str) -> Result<Value> {
    let parsed = match decl.ty.base {
        BaseType::Int => text.parse::<i64>().ok().map(Value::Int),
        BaseType::Float => text
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Value::Float),
        BaseType::Bool => match text {
            "true" => Some(Value::Bool(true)),
            "false" => Some(Value::Bool(false)),
            _ => None,
        },
        BaseType::Str => Some(Value::Str(text.trim_matches('"').into())),
        other => {
            return Diagnostic::new(format!(
                "-D cannot set `{}`: it is a {} config",
                decl.name.name,
                other.name()
            ))
            .label(decl.ty.span, format!("declared {} here", decl.ty))
            .hint("-D sets int, float, bool and str configs; change list configs in the source")
            .err()
        }
    };
    match parsed {
        Some(v) => Ok(v),
        None if decl.ty.optional && text == "none" => Ok(Value::None),
        None => Diagnostic::new(format!(
            "-D {}={text}: `{text}` is not {}",
            decl.name.name,
            type_phrase(decl.ty.base, false)
        ))
        .label(
            decl.ty.span,
            format!("`{}` is declared {} here", decl.name.name, decl.ty),
        )
        .err(),
    }
}
