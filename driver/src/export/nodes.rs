//! The rfn inference graph as an ONNX graph: one ONNX node per op in topological order
//! (`Conv`, `BatchNormalization`, `Relu`, `Add`, `MaxPool`, `Resize`), parameters as
//! initializers, inputs and outputs under the program's names, each node's `.rfn` source
//! location in its doc string; the shape arithmetic that feeds `Resize` its sizes when
//! sizes are symbolic; `ArgMax` outputs for `--argmax`.
//!
//! An op that has no ONNX counterpart in an inference graph (a loss kept as an output) is
//! the user's error, naming the op and its location.

use std::collections::{BTreeMap, HashMap, HashSet};

use rfnc_compiler::ir::{DType, Graph, NodeId, Op};

use super::dynamic::{Shapes, SizeFrom};
use super::proto::{
    attr_float, attr_int, attr_ints, attr_str, tensor_f32, tensor_i64, value_info, AttributeProto,
    Dim, GraphProto, NodeProto, FLOAT, INT32, INT64,
};
use super::{loc_text, Unsupported};

/// What the ONNX graph is built from.
pub struct Parts<'a> {
    pub graph: &'a Graph,
    pub params: &'a BTreeMap<String, Vec<f32>>,
    pub shapes: &'a Shapes,
    /// The outputs that get an `NAME_argmax` output ([`score_outputs`]).
    pub argmax: Vec<String>,
}

/// Builds the graph; `Err` names the first op ONNX cannot express here.
pub fn build(parts: &Parts) -> Result<GraphProto, Unsupported> {
    let mut b = Builder::new(parts);
    let order = parts
        .graph
        .topo_order()
        .expect("verified graphs are acyclic");
    for (k, &id) in order.iter().enumerate() {
        b.node(id, k)?;
    }
    b.outputs();
    Ok(b.proto)
}

struct Builder<'a> {
    parts: &'a Parts<'a>,
    g: &'a Graph,
    proto: GraphProto,
    /// The ONNX value name of each rfn node.
    names: HashMap<NodeId, String>,
    /// Every value name given out or reserved (inputs, parameters, outputs), so that a
    /// made-up name never collides with one of the program's.
    used: HashSet<String>,
    /// `Shape` results already made, by node.
    shapes: HashMap<NodeId, String>,
    /// `Slice`s of them already made, by node and start.
    slices: HashMap<(NodeId, i64), String>,
    /// int64 constants already made, by value.
    consts: HashMap<Vec<i64>, String>,
}

impl<'a> Builder<'a> {
    fn new(parts: &'a Parts<'a>) -> Self {
        let g = parts.graph;
        let mut names = HashMap::new();
        // A computed value that is an output carries the output's name (the first output
        // naming it); other outputs become `Identity` nodes.
        for o in &g.outputs {
            if !g.node(o.value).op.is_leaf() {
                names.entry(o.value).or_insert_with(|| o.name.clone());
            }
        }
        let mut used: HashSet<String> = g.outputs.iter().map(|o| o.name.clone()).collect();
        used.extend(g.outputs.iter().map(|o| format!("{}_argmax", o.name)));
        for id in g.node_ids() {
            if let Op::Input { name } | Op::Param { name, .. } = &g.node(id).op {
                used.insert(name.clone());
            }
        }
        Builder {
            parts,
            g,
            proto: GraphProto {
                name: g.name.clone(),
                ..Default::default()
            },
            names,
            used,
            shapes: HashMap::new(),
            slices: HashMap::new(),
            consts: HashMap::new(),
        }
    }

    /// `base`, or `base_1`, `base_2`, ... when `base` is taken.
    fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 0;
        while !self.used.insert(name.clone()) {
            k += 1;
            name = format!("{base}_{k}");
        }
        name
    }

    fn name(&self, id: NodeId) -> String {
        self.names[&id].clone()
    }

    /// Emits the rfn node `id`, the `k`-th in topological order.
    fn node(&mut self, id: NodeId, k: usize) -> Result<(), Unsupported> {
        let node = self.g.node(id);
        if node.op.is_leaf() {
            self.leaf(id, k);
            return Ok(());
        }
        let (op_type, attrs) = self.op(id)?;
        let node_name = node_name(&node.loc.scope, op_type, k);
        let mut inputs: Vec<String> = self.g.operands(id).iter().map(|&o| self.name(o)).collect();
        match &node.op {
            // ONNX orders them scale, bias, mean, var; rfn mean, var, gamma, beta.
            Op::BatchNorm { .. } => {
                inputs = vec![
                    inputs[0].clone(),
                    inputs[3].clone(),
                    inputs[4].clone(),
                    inputs[1].clone(),
                    inputs[2].clone(),
                ]
            }
            Op::ResizeBilinear { size, .. } => {
                let doc = format!("the sizes of the resize at {}", loc_text(&node.loc));
                let sizes = self.resize_sizes(id, *size, &node_name, doc);
                inputs.extend([String::new(), String::new(), sizes]);
            }
            _ => {}
        }
        let output = match self.names.get(&id) {
            Some(name) => name.clone(),
            None => self.fresh(&node_name),
        };
        self.names.insert(id, output.clone());
        self.push(
            op_type,
            node_name,
            inputs,
            output,
            attrs,
            loc_text(&node.loc),
        );
        Ok(())
    }

    /// An input becomes a graph input, a parameter an initializer, a constant a scalar
    /// initializer.
    fn leaf(&mut self, id: NodeId, k: usize) {
        let node = self.g.node(id);
        let name = match &node.op {
            Op::Input { name } => {
                let elem = elem_type(node.ty.dtype);
                let dims = self.parts.shapes.dims(self.g, id, name);
                let doc = loc_text(&node.loc);
                self.proto.input.push(value_info(name, elem, &dims, &doc));
                name.clone()
            }
            Op::Param { name, .. } => {
                let mut t = tensor_f32(name, &node.ty.dims, &self.parts.params[name]);
                t.doc_string = loc_text(&node.loc);
                self.proto.initializer.push(t);
                name.clone()
            }
            Op::Constant { value } => {
                let name = self.fresh(&format!("constant_{k}"));
                let t = tensor_f32(&name, &[], &[*value as f32]);
                self.proto.initializer.push(t);
                name
            }
            _ => unreachable!("only leaves come here"),
        };
        self.names.insert(id, name);
    }

    /// The ONNX op type and attributes of a computed rfn op.
    fn op(&self, id: NodeId) -> Result<(&'static str, Vec<AttributeProto>), Unsupported> {
        Ok(match &self.g.node(id).op {
            Op::Conv2d {
                stride,
                pad,
                dilation,
                groups,
            } => {
                let w = &self.g.node(self.g.operands(id)[1]).ty.dims;
                let attrs = vec![
                    attr_ints("kernel_shape", [w[2], w[3]]),
                    attr_ints("strides", *stride),
                    attr_ints("pads", *pad),
                    attr_ints("dilations", *dilation),
                    attr_int("group", *groups as i64),
                ];
                ("Conv", attrs)
            }
            Op::BatchNorm { eps } => (
                "BatchNormalization",
                vec![attr_float("epsilon", *eps as f32)],
            ),
            Op::Relu => ("Relu", vec![]),
            Op::Add => ("Add", vec![]),
            // ONNX broadcasts as rfn's `mul` does: equal ranks with sizes equal or 1, or a
            // rank-0 scalar.
            Op::Mul => ("Mul", vec![]),
            Op::Sigmoid => ("Sigmoid", vec![]),
            Op::Concat => ("Concat", vec![attr_int("axis", 1)]),
            Op::GlobalAvgPool2d => ("GlobalAveragePool", vec![]),
            Op::AvgPool2d {
                kernel,
                stride,
                pad,
                count_include_pad,
            } => {
                // Zero padding; the divisor counts the padding or not, as in rfn.
                let attrs = vec![
                    attr_ints("kernel_shape", *kernel),
                    attr_ints("strides", *stride),
                    attr_ints("pads", *pad),
                    attr_int("count_include_pad", i64::from(*count_include_pad)),
                ];
                ("AveragePool", attrs)
            }
            Op::MaxPool2d {
                kernel,
                stride,
                pad,
            } => {
                // ONNX pads max pooling with -inf, as rfn does.
                let attrs = vec![
                    attr_ints("kernel_shape", *kernel),
                    attr_ints("strides", *stride),
                    attr_ints("pads", *pad),
                ];
                ("MaxPool", attrs)
            }
            Op::ResizeBilinear { align_corners, .. } => {
                let mode = if *align_corners {
                    "align_corners"
                } else {
                    // `half_pixel` is rfnc's rule exactly, including an output size of 1
                    // (the centre; `pytorch_half_pixel` would take the first sample).
                    "half_pixel"
                };
                let attrs = vec![
                    attr_str("mode", "linear"),
                    attr_str("coordinate_transformation_mode", mode),
                ];
                ("Resize", attrs)
            }
            _ => return Err(self.unsupported(id)),
        })
    }

    fn push(
        &mut self,
        op_type: &str,
        name: String,
        input: Vec<String>,
        output: String,
        attribute: Vec<AttributeProto>,
        doc_string: String,
    ) {
        self.proto.node.push(NodeProto {
            input,
            output: vec![output],
            name,
            op_type: op_type.into(),
            attribute,
            doc_string,
            ..Default::default()
        });
    }

    fn unsupported(&self, id: NodeId) -> Unsupported {
        let op = &self.g.node(id).op;
        let why = if op.is_loss() {
            "it is a training loss, and the export holds the inference graph: make it the network's `objective` (which the export leaves out), or remove the output"
        } else {
            "rfnc export has no ONNX translation for it; it translates conv2d, batch_norm, relu, add, mul, sigmoid, concat, max_pool2d, avg_pool2d, global_avg_pool2d and resize_bilinear"
        };
        Unsupported {
            op: format!("rfn.{}", op.mnemonic()),
            loc: self.g.node(id).loc.clone(),
            why: why.into(),
        }
    }

    /// The `sizes` input of the resize `id` to `size`: a constant when every size is
    /// fixed, else N and C from the resized value's shape and H and W from the values
    /// [`Shapes::resize`] names (or constants).
    fn resize_sizes(&mut self, id: NodeId, size: [u64; 2], node_name: &str, doc: String) -> String {
        let shapes = self.parts.shapes;
        let x = self.g.operands(id)[0];
        let x_dims = &self.g.node(x).ty.dims;
        if !shapes.batch && !shapes.spatial {
            let all = [x_dims[0], x_dims[1], size[0], size[1]].map(|v| v as i64);
            return self.constant(&all);
        }
        let mut parts = Vec::new();
        if shapes.batch {
            parts.push(self.shape_slice(x, 0, 2));
        } else {
            parts.push(self.constant(&[x_dims[0] as i64, x_dims[1] as i64]));
        }
        let from = match shapes.resize.get(&id) {
            Some(from) if shapes.spatial => *from,
            _ => [SizeFrom::Fixed(size[0]), SizeFrom::Fixed(size[1])],
        };
        for (k, f) in from.iter().enumerate() {
            parts.push(match *f {
                SizeFrom::Fixed(v) => self.constant(&[v as i64]),
                SizeFrom::DimOf(v) => self.shape_slice(v, 2 + k as i64, 3 + k as i64),
            });
        }
        let out = self.fresh(&format!("{node_name}/sizes"));
        self.push(
            "Concat",
            out.clone(),
            parts,
            out.clone(),
            vec![attr_int("axis", 0)],
            doc,
        );
        out
    }

    /// `Slice(Shape(id), [start], [end])`: dims `start..end` of `id`'s value at run time.
    fn shape_slice(&mut self, id: NodeId, start: i64, end: i64) -> String {
        let value = self.name(id);
        let shape = match self.shapes.get(&id) {
            Some(s) => s.clone(),
            None => {
                let s = self.fresh(&format!("{value}/shape"));
                let doc = format!("the shape of `{value}` at run time");
                self.push(
                    "Shape",
                    s.clone(),
                    vec![value.clone()],
                    s.clone(),
                    vec![],
                    doc,
                );
                self.shapes.insert(id, s.clone());
                s
            }
        };
        if let Some(out) = self.slices.get(&(id, start)) {
            return out.clone();
        }
        let out = self.fresh(&format!("{shape}_{start}_{end}"));
        let (s, e) = (self.constant(&[start]), self.constant(&[end]));
        let doc = format!("dims {start}..{end} of `{value}` at run time");
        self.push(
            "Slice",
            out.clone(),
            vec![shape, s, e],
            out.clone(),
            vec![],
            doc,
        );
        self.slices.insert((id, start), out.clone());
        out
    }

    /// An int64 initializer holding `values`, shared by every use.
    fn constant(&mut self, values: &[i64]) -> String {
        if let Some(name) = self.consts.get(values) {
            return name.clone();
        }
        let text: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        let name = self.fresh(&format!("const_i64_{}", text.join("_")));
        self.proto.initializer.push(tensor_i64(&name, values));
        self.consts.insert(values.to_vec(), name.clone());
        name
    }

    /// The graph outputs in the program's order (an `Identity` for an output that is a
    /// leaf or shares its value with an earlier output), then the `--argmax` outputs.
    fn outputs(&mut self) {
        let g = self.g;
        for o in &g.outputs {
            let node = g.node(o.value);
            if self.names[&o.value] != o.name {
                let from = self.name(o.value);
                let name = format!("{}/Identity", o.name);
                let doc = format!("output `{}` is `{from}`", o.name);
                self.push("Identity", name, vec![from], o.name.clone(), vec![], doc);
            }
            let dims = self.parts.shapes.dims(g, o.value, &o.name);
            let doc = loc_text(&node.loc);
            let info = value_info(&o.name, elem_type(node.ty.dtype), &dims, &doc);
            self.proto.output.push(info);
        }
        self.argmax_outputs();
    }

    /// `NAME_argmax = ArgMax(NAME, axis = 1)` for each output of [`Parts::argmax`]: int64
    /// `[N, H, W]`, the first maximum on ties.
    fn argmax_outputs(&mut self) {
        let g = self.g;
        for o in g
            .outputs
            .iter()
            .filter(|o| self.parts.argmax.contains(&o.name))
        {
            let name = format!("{}_argmax", o.name);
            let attrs = vec![
                attr_int("axis", 1),
                attr_int("keepdims", 0),
                attr_int("select_last_index", 0),
            ];
            let doc = format!("the class of each pixel of `{}`", o.name);
            let node = format!("{name}/ArgMax");
            let input = vec![o.name.clone()];
            self.push("ArgMax", node, input, name.clone(), attrs, doc.clone());
            let d = self.parts.shapes.dims(g, o.value, &o.name);
            let dims: Vec<Dim> = [0, 2, 3].iter().map(|&i| d[i].clone()).collect();
            let info = value_info(&name, INT64, &dims, &doc);
            self.proto.output.push(info);
        }
    }
}

/// `SCOPE/OpType_K`, or `OpType_K` at the top level: unique (K is the topological index)
/// and readable in Netron or an ONNX Runtime profile.
fn node_name(scope: &str, op_type: &str, k: usize) -> String {
    if scope.is_empty() {
        format!("{op_type}_{k}")
    } else {
        format!("{scope}/{op_type}_{k}")
    }
}

fn elem_type(dtype: DType) -> i32 {
    match dtype {
        DType::F32 => FLOAT,
        DType::I32 => INT32,
    }
}

/// The outputs `--argmax` applies to: those holding class scores (f32 NxCxHxW with
/// C >= 2); `Err` says why there are none, or which `NAME_argmax` is taken.
pub fn score_outputs(g: &Graph) -> Result<Vec<String>, String> {
    let scores: Vec<String> = g
        .outputs
        .iter()
        .filter(|o| {
            let ty = &g.node(o.value).ty;
            ty.dtype == DType::F32 && ty.rank() == 4 && ty.dims[1] >= 2
        })
        .map(|o| o.name.clone())
        .collect();
    if scores.is_empty() {
        let outputs: Vec<String> = g
            .outputs
            .iter()
            .map(|o| format!("`{}` {}", o.name, g.node(o.value).ty))
            .collect();
        return Err(format!(
            "no output holds class scores (f32 NxCxHxW with at least 2 channels): {}",
            outputs.join(", ")
        ));
    }
    for name in &scores {
        let taken = format!("{name}_argmax");
        if g.outputs.iter().any(|o| o.name == taken) {
            return Err(format!("the network already has an output `{taken}`"));
        }
    }
    Ok(scores)
}
