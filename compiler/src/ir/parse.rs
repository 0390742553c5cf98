//! Reads the text form back into a [`Graph`] (the inverse of [`crate::ir::print_graph`]).
//!
//! Invariants: every value is defined before it is used; the operand types written after
//! `:` agree with the values' types; each op's attributes are exactly those it has. The
//! result is not verified here: call [`crate::ir::verify`] on it (the recorded result types
//! are taken as written so that the verifier can judge them).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use pest::iterators::Pair;
use pest::Parser;
use pest_derive::Parser;

use super::{Attr, DType, Graph, Loc, NodeId, Op, Output, SourcePos, TensorType};

#[derive(Parser)]
#[grammar = "ir/ir.pest"]
struct IrParser;

/// A syntax or semantic error in IR text, with a 1-based line and column.
#[derive(Clone, Debug, PartialEq)]
pub struct ParseError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.col, self.message)
    }
}

impl std::error::Error for ParseError {}

/// Grammar rules in words, for syntax errors.
fn describe_rule(rule: &Rule) -> String {
    match rule {
        Rule::op_name => "an op name such as \"rfn.relu\"",
        Rule::value | Rule::values => "a value such as %3",
        Rule::tensor_type | Rule::types => "a tensor type such as tensor<1x3x8x8xf32>",
        Rule::attr_dict => "an attribute dictionary `{...}`",
        Rule::attr | Rule::ident => "an attribute name",
        Rule::loc => "`loc(...)`",
        Rule::op => "an operation",
        Rule::ret => "\"rfn.return\"",
        Rule::EOI => "end of input",
        other => return format!("{other:?}"),
    }
    .to_string()
}

fn error_at(pair: &Pair<Rule>, message: impl Into<String>) -> ParseError {
    let (line, col) = pair.as_span().start_pos().line_col();
    ParseError {
        line,
        col,
        message: message.into(),
    }
}

/// Parses a whole graph.
pub fn parse_graph(text: &str) -> Result<Graph, ParseError> {
    let mut pairs = IrParser::parse(Rule::file, text).map_err(|e| {
        let e = e.renamed_rules(describe_rule);
        let (line, col) = match e.line_col {
            pest::error::LineColLocation::Pos(p) | pest::error::LineColLocation::Span(p, _) => p,
        };
        ParseError {
            line,
            col,
            message: format!("syntax error: {}", e.variant.message()),
        }
    })?;
    let file = pairs.next().expect("grammar: file");
    let mut graph = Graph::new("");
    let mut values: HashMap<String, NodeId> = HashMap::new();
    for item in file.into_inner() {
        match item.as_rule() {
            Rule::op => parse_op(item, &mut graph, &mut values)?,
            Rule::ret => parse_return(item, &mut graph, &values)?,
            Rule::attr_dict => {
                let attrs = parse_attrs(item.clone())?;
                match attrs.as_slice() {
                    [(k, Attr::Str(name))] if k == "sym_name" => graph.name = name.clone(),
                    _ => {
                        return Err(error_at(
                            &item,
                            "rfn.graph takes exactly the attribute `sym_name`",
                        ))
                    }
                }
            }
            _ => {}
        }
    }
    Ok(graph)
}

fn parse_op(
    pair: Pair<Rule>,
    graph: &mut Graph,
    values: &mut HashMap<String, NodeId>,
) -> Result<(), ParseError> {
    let whole = pair.clone();
    let mut inner = pair.into_inner();
    let result = inner.next().expect("grammar: value");
    let name_pair = inner.next().expect("grammar: op_name");
    let mnemonic = name_pair
        .clone()
        .into_inner()
        .next()
        .expect("grammar: mnemonic")
        .as_str()
        .to_string();
    let operands = resolve_values(inner.next().expect("grammar: values"), values)?;
    let mut attrs = Vec::new();
    let mut next = inner.next().expect("grammar: types");
    if next.as_rule() == Rule::attr_dict {
        attrs = parse_attrs(next)?;
        next = inner.next().expect("grammar: types");
    }
    check_operand_types(&next, &operands, graph)?;
    let ty = parse_type(inner.next().expect("grammar: result type"))?;
    let loc = match inner.next() {
        Some(l) => parse_loc(l)?,
        None => Loc::default(),
    };
    let op = Op::from_parts(&mnemonic, &attrs).map_err(|e| error_at(&name_pair, e.0))?;
    let (lo, hi) = op.arity();
    if operands.len() < lo || operands.len() > hi {
        return Err(error_at(
            &whole,
            format!(
                "rfn.{mnemonic} takes {}, found {}",
                op.arity_text(),
                operands.len()
            ),
        ));
    }
    let id = graph.add(op, &operands, ty, loc);
    if values.insert(result.as_str().to_string(), id).is_some() {
        return Err(error_at(
            &result,
            format!("value {} is defined twice", result.as_str()),
        ));
    }
    Ok(())
}

fn parse_return(
    pair: Pair<Rule>,
    graph: &mut Graph,
    values: &HashMap<String, NodeId>,
) -> Result<(), ParseError> {
    let whole = pair.clone();
    let mut inner = pair.into_inner();
    let operands = resolve_values(inner.next().expect("grammar: values"), values)?;
    let mut names = Vec::new();
    let mut next = inner.next().expect("grammar: types");
    if next.as_rule() == Rule::attr_dict {
        for (key, value) in parse_attrs(next.clone())? {
            match (key.as_str(), value) {
                ("names", Attr::Strs(n)) => names = n,
                // `[]` reads as an empty array of either kind.
                ("names", Attr::Ints(n)) if n.is_empty() => names = Vec::new(),
                ("objective", Attr::Str(o)) => graph.objective = Some(o),
                (k, _) => {
                    return Err(error_at(
                        &next,
                        format!("unexpected attribute `{k}` on rfn.return"),
                    ))
                }
            }
        }
        next = inner.next().expect("grammar: types");
    }
    check_operand_types(&next, &operands, graph)?;
    if names.len() != operands.len() {
        return Err(error_at(
            &whole,
            format!(
                "rfn.return has {} values but {} names",
                operands.len(),
                names.len()
            ),
        ));
    }
    graph.outputs = names
        .into_iter()
        .zip(operands)
        .map(|(name, value)| Output { name, value })
        .collect();
    Ok(())
}

fn resolve_values(
    pair: Pair<Rule>,
    values: &HashMap<String, NodeId>,
) -> Result<Vec<NodeId>, ParseError> {
    pair.into_inner()
        .map(|v| {
            values
                .get(v.as_str())
                .copied()
                .ok_or_else(|| error_at(&v, format!("use of undefined value {}", v.as_str())))
        })
        .collect()
}

fn check_operand_types(
    pair: &Pair<Rule>,
    operands: &[NodeId],
    graph: &Graph,
) -> Result<(), ParseError> {
    let types: Vec<Pair<Rule>> = pair.clone().into_inner().collect();
    if types.len() != operands.len() {
        return Err(error_at(
            pair,
            format!(
                "{} operand types listed for {} operands",
                types.len(),
                operands.len()
            ),
        ));
    }
    for (t, &o) in types.into_iter().zip(operands) {
        let declared = parse_type(t.clone())?;
        if declared != graph.node(o).ty {
            return Err(error_at(
                &t,
                format!(
                    "operand type {declared} does not match the value's type {}",
                    graph.node(o).ty
                ),
            ));
        }
    }
    Ok(())
}

fn parse_type(pair: Pair<Rule>) -> Result<TensorType, ParseError> {
    let mut dims = Vec::new();
    let mut dtype = DType::F32;
    for part in pair.clone().into_inner() {
        match part.as_rule() {
            Rule::dim => dims.push(
                part.as_str()
                    .parse::<u64>()
                    .map_err(|_| error_at(&part, "dimension is too large"))?,
            ),
            Rule::elem => dtype = DType::from_name(part.as_str()).expect("grammar: elem"),
            _ => {}
        }
    }
    Ok(TensorType::new(dtype, dims))
}

fn parse_attrs(pair: Pair<Rule>) -> Result<Vec<(String, Attr)>, ParseError> {
    let mut out: Vec<(String, Attr)> = Vec::new();
    for attr in pair.into_inner() {
        let mut inner = attr.clone().into_inner();
        let key = inner.next().expect("grammar: ident").as_str().to_string();
        let value = parse_attr_value(inner.next().expect("grammar: attr value"))?;
        if out.iter().any(|(k, _)| *k == key) {
            return Err(error_at(&attr, format!("attribute `{key}` is given twice")));
        }
        out.push((key, value));
    }
    Ok(out)
}

fn parse_int(pair: &Pair<Rule>) -> Result<i64, ParseError> {
    pair.as_str()
        .parse::<i64>()
        .map_err(|_| error_at(pair, "integer out of range"))
}

fn parse_attr_value(pair: Pair<Rule>) -> Result<Attr, ParseError> {
    Ok(match pair.as_rule() {
        Rule::float => Attr::Float(
            pair.as_str()
                .parse()
                .map_err(|_| error_at(&pair, "bad float"))?,
        ),
        Rule::int => Attr::Int(parse_int(&pair)?),
        Rule::boolean => Attr::Bool(pair.as_str() == "true"),
        Rule::string => Attr::Str(parse_string(pair)?),
        Rule::int_array => Attr::Ints(
            pair.into_inner()
                .map(|p| parse_int(&p))
                .collect::<Result<_, _>>()?,
        ),
        Rule::str_array => Attr::Strs(
            pair.into_inner()
                .map(parse_string)
                .collect::<Result<_, _>>()?,
        ),
        _ => unreachable!("grammar: attr_value alternatives"),
    })
}

fn parse_string(pair: Pair<Rule>) -> Result<String, ParseError> {
    let inner = pair
        .clone()
        .into_inner()
        .next()
        .expect("grammar: str_inner");
    let raw = inner.as_str();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('"') => out.push('"'),
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some(h1) if h1.is_ascii_hexdigit() => {
                let h2 = chars.next().filter(|c| c.is_ascii_hexdigit());
                let code = h2.and_then(|h2| u8::from_str_radix(&format!("{h1}{h2}"), 16).ok());
                out.push(code.ok_or_else(|| error_at(&pair, "bad escape in string"))? as char);
            }
            _ => return Err(error_at(&pair, "bad escape in string")),
        }
    }
    Ok(out)
}

fn parse_loc(pair: Pair<Rule>) -> Result<Loc, ParseError> {
    let mut loc = Loc::default();
    for part in pair.into_inner() {
        match part.as_rule() {
            Rule::unknown => {}
            Rule::string => loc.scope = parse_string(part)?,
            Rule::file_loc => {
                let mut it = part.clone().into_inner();
                let file = parse_string(it.next().expect("grammar: file"))?;
                let mut nums = Vec::new();
                for n in it {
                    nums.push(
                        u32::try_from(parse_int(&n)?)
                            .map_err(|_| error_at(&n, "bad line or column"))?,
                    );
                }
                let (end_line, end_col) = if nums.len() == 4 {
                    (nums[2], nums[3])
                } else {
                    (nums[0], nums[1])
                };
                loc.pos = Some(SourcePos {
                    file: Arc::from(file),
                    line: nums[0],
                    col: nums[1],
                    end_line,
                    end_col,
                });
            }
            _ => {}
        }
    }
    Ok(loc)
}
