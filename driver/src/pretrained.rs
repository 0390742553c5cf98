//! Pretrained backbones: a torchvision (or timm) ResNet `state_dict` saved as safetensors,
//! mapped by name onto every ResNet backbone of a network; the other parameters (RefineNet
//! blocks, head) start from the graph's own initialisation rules.
//!
//! Invariants: the result holds every parameter of the graph with its shape; every tensor
//! of the file (other than `fc.*` and `num_batches_tracked`) lands on a parameter of the
//! same shape in every backbone, and every backbone parameter comes from the file, or
//! nothing is returned and each problem is listed; a backbone with the MSRA stride style
//! (stride on the first 1x1 conv) is refused, since torchvision's weights assume the
//! stride on the 3x3 conv.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use rfnc_compiler::init::parameters;
use rfnc_compiler::ir::{Graph, Op, ParamKind};
use rfnc_dsl::Diagnostic;
use rfnc_runtime::Weights;
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;

use crate::error::Error;
use crate::weights::init_weights;

/// At most this many problems are listed, then a count of the rest.
const SHOWN: usize = 20;

/// Weights with imported backbones, and what came from where.
#[derive(Clone, Debug)]
pub struct Imported {
    /// Every parameter of the graph.
    pub weights: Weights,
    /// The backbone scopes filled from the file, in graph order.
    pub backbones: Vec<String>,
    /// The parameters filled from the file (every backbone's), by rfnc name.
    pub imported: Vec<String>,
    /// The parameters initialised by the graph's rules, in graph order.
    pub initialised: Vec<String>,
    /// The file's tensors that were dropped (`fc.*`, `*.num_batches_tracked`).
    pub ignored: Vec<String>,
}

impl Imported {
    /// The components of the initialised parameters, in graph order: for each parameter,
    /// its shortest scope that holds no backbone (`refine4`, `head`).
    pub fn initialised_components(&self) -> Vec<String> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for name in &self.initialised {
            let component = component_of(name, &self.backbones);
            if seen.insert(component.clone()) {
                out.push(component);
            }
        }
        out
    }
}

/// The shortest dotted prefix of `name` that is neither a backbone scope nor one of its
/// ancestors (the whole name if there is none).
fn component_of(name: &str, backbones: &[String]) -> String {
    let mut end = 0;
    for (i, part) in name.split('.').enumerate() {
        end += part.len() + usize::from(i > 0);
        let prefix = &name[..end];
        let holds_backbone = backbones
            .iter()
            .any(|b| b == prefix || b.starts_with(&format!("{prefix}.")));
        if !holds_backbone {
            return prefix.to_string();
        }
    }
    name.to_string()
}

/// What a torchvision `state_dict` name becomes under a backbone scope.
#[derive(Clone, Debug, PartialEq)]
pub enum Mapped {
    /// The parameter name below the scope (`layer1.unit0.conv1.weight`).
    Param(String),
    /// Not a backbone parameter: the classifier (`fc.*`) or a batch counter.
    Ignored,
}

/// Maps a torchvision/timm ResNet name to rfnc's: `layerS.I.X` becomes `layerS.unitI.X`,
/// `downsample.0`/`.1` become `downsample.conv`/`.bn`; `conv1.*`, `bn1.*` are unchanged.
/// Names that fit no rule are returned unchanged (and then match no parameter).
pub fn torchvision_to_rfnc(name: &str) -> Mapped {
    if name.starts_with("fc.") || name.ends_with("num_batches_tracked") {
        return Mapped::Ignored;
    }
    let mut parts: Vec<String> = name.split('.').map(str::to_string).collect();
    let is_stage = |p: &str| p.strip_prefix("layer").is_some_and(is_number);
    if parts.len() > 2 && is_stage(&parts[0]) && is_number(&parts[1]) {
        parts[1] = format!("unit{}", parts[1]);
        if parts.len() > 3 && parts[2] == "downsample" {
            match parts[3].as_str() {
                "0" => parts[3] = "conv".into(),
                "1" => parts[3] = "bn".into(),
                _ => {}
            }
        }
    }
    Mapped::Param(parts.join("."))
}

/// The inverse of [`torchvision_to_rfnc`] for a name below a backbone scope.
pub fn rfnc_to_torchvision(name: &str) -> String {
    let mut parts: Vec<String> = name.split('.').map(str::to_string).collect();
    if parts.len() > 2 {
        if let Some(i) = parts[1].strip_prefix("unit").filter(|i| is_number(i)) {
            parts[1] = i.to_string();
            if parts.len() > 3 && parts[2] == "downsample" {
                match parts[3].as_str() {
                    "conv" => parts[3] = "0".into(),
                    "bn" => parts[3] = "1".into(),
                    _ => {}
                }
            }
        }
    }
    parts.join(".")
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// The ResNet backbones of a graph: every scope `X` with parameters `X.conv1.weight` and
/// `X.layer1.unit0.conv1.weight` (the empty scope for a bare `resnet(...)`), in graph order.
pub fn backbone_scopes(graph: &Graph) -> Vec<String> {
    let params = parameters(graph);
    let mut scopes = Vec::new();
    for name in param_order(graph) {
        let Some(scope) = name.strip_suffix("layer1.unit0.conv1.weight") else {
            continue;
        };
        let stem = format!("{scope}conv1.weight");
        if (scope.is_empty() || scope.ends_with('.')) && params.contains_key(stem.as_str()) {
            scopes.push(scope.trim_end_matches('.').to_string());
        }
    }
    scopes
}

/// The graph's parameter names in graph order.
fn param_order(graph: &Graph) -> Vec<&str> {
    graph
        .node_ids()
        .filter_map(|id| match &graph.node(id).op {
            Op::Param { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect()
}

/// `scope.rest`, or `rest` at the top level.
fn scoped(scope: &str, rest: &str) -> String {
    if scope.is_empty() {
        rest.to_string()
    } else {
        format!("{scope}.{rest}")
    }
}

/// Whether `name` lies in backbone `scope`.
fn in_scope(name: &str, scope: &str) -> bool {
    scope.is_empty() || name.strip_prefix(scope).is_some_and(|r| r.starts_with('.'))
}

/// The stride of the conv that weight `weight` feeds, if there is one.
fn conv_stride(graph: &Graph, weight: &str) -> Option<[u64; 2]> {
    let id = graph.node_ids().find(
        |&id| matches!(&graph.node(id).op, Op::Param { name, .. } if name.as_str() == weight),
    )?;
    graph
        .users(id)
        .into_iter()
        .find_map(|u| match graph.node(u).op {
            Op::Conv2d { stride, .. } => Some(stride),
            _ => None,
        })
}

/// Refuses backbones whose stages start with a strided 1x1 conv (the MSRA style).
fn check_style(graph: &Graph, backbones: &[String]) -> Result<(), Error> {
    let mut notes = Vec::new();
    for scope in backbones {
        for stage in 2..=4 {
            let conv1 = scoped(scope, &format!("layer{stage}.unit0.conv1"));
            match conv_stride(graph, &format!("{conv1}.weight")) {
                Some(stride) if stride != [1, 1] => notes.push(format!(
                    "`{conv1}` (the first 1x1 conv of stage {stage}) has stride {}; torchvision puts the stride on the 3x3 `conv2`",
                    stride[0]
                )),
                _ => {}
            }
        }
    }
    if notes.is_empty() {
        return Ok(());
    }
    let mut d = Diagnostic::new(format!(
        "network `{}` uses the MSRA stride style; torchvision weights need the torchvision style",
        graph.name
    ));
    for n in notes {
        d = d.note(n);
    }
    Err(d
        .note("the shapes are the same, but the same weights would compute a different function")
        .hint("compile with `-D style=torchvision` (the examples' `config style`), or pass `style = \"torchvision\"` to `resnet(...)`")
        .into())
}

/// The file's tensors to import: name, shape and values (converted to f32), and the names
/// dropped.
struct StateDict {
    tensors: Vec<(String, Vec<u64>, Vec<f32>)>,
    ignored: Vec<String>,
}

/// Reads a safetensors `state_dict`; float tensors (F32, F64, F16, BF16) become f32.
fn read_state_dict(path: &Path) -> Result<StateDict, Error> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::message(format!("cannot read `{}`: {e}", path.display())))?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| {
        Error::user(
            Diagnostic::new(format!(
                "`{}` is not a usable safetensors file: {e}",
                path.display()
            ))
            .hint(CONVERT_HINT),
        )
    })?;
    let mut dict = StateDict {
        tensors: Vec::new(),
        ignored: Vec::new(),
    };
    let mut names = file.names();
    names.sort();
    for name in names {
        if torchvision_to_rfnc(name) == Mapped::Ignored {
            dict.ignored.push(name.to_string());
            continue;
        }
        let view = file
            .tensor(name)
            .map_err(|e| Error::message(e.to_string()))?;
        let data = to_f32(view.dtype(), view.data()).ok_or_else(|| {
            Error::message(format!(
                "tensor `{name}` of `{}` is {:?}; --from-torchvision reads F32, F64, F16 and BF16 tensors",
                path.display(),
                view.dtype()
            ))
        })?;
        let shape = view.shape().iter().map(|&d| d as u64).collect();
        dict.tensors.push((name.to_string(), shape, data));
    }
    Ok(dict)
}

/// Little-endian float data as f32 (None for a type that is not a float of 16-64 bits).
fn to_f32(dtype: Dtype, data: &[u8]) -> Option<Vec<f32>> {
    let out = match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16))
            .collect(),
        _ => return None,
    };
    Some(out)
}

/// IEEE half precision to single (exact: every half is a single).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let bits = match exp {
        0 => {
            // zero or subnormal: man * 2^-24
            let v = man as f32 / (1u32 << 24) as f32;
            return if sign == 0 { v } else { -v };
        }
        0x1f => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 112) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// How to make a file this command reads.
const CONVERT_HINT: &str = "save a torchvision or timm ResNet's weights with `safetensors.torch.save_file(model.state_dict(), \"resnet.safetensors\")`";

/// The graph's parameters: shape and kind, by name.
type Params<'g> = BTreeMap<&'g str, (&'g [u64], ParamKind)>;

/// Places the file's tensors in every backbone; each name or shape that does not fit, and
/// each backbone parameter left without a value, is a problem. Returns the names filled
/// and the problems.
fn place(
    dict: &StateDict,
    backbones: &[String],
    params: &Params,
    weights: &mut Weights,
) -> (Vec<String>, Vec<String>) {
    let mut problems = Vec::new();
    let mut imported = Vec::new();
    for scope in backbones {
        let given = place_in(scope, dict, params, weights, &mut imported, &mut problems);
        for (name, (dims, _)) in params.iter().filter(|(n, _)| in_scope(n, scope)) {
            if !given.contains(*name) {
                let rest = if scope.is_empty() {
                    name
                } else {
                    &name[scope.len() + 1..]
                };
                problems.push(format!(
                    "`{name}` {dims:?} is missing: the file has no `{}`",
                    rfnc_to_torchvision(rest)
                ));
            }
        }
    }
    (imported, problems)
}

/// Places the file's tensors in backbone `scope`; returns every name the file gives there
/// (fitting or not).
fn place_in(
    scope: &str,
    dict: &StateDict,
    params: &Params,
    weights: &mut Weights,
    imported: &mut Vec<String>,
    problems: &mut Vec<String>,
) -> BTreeSet<String> {
    let mut given = BTreeSet::new();
    for (tv_name, shape, data) in &dict.tensors {
        let Mapped::Param(rest) = torchvision_to_rfnc(tv_name) else {
            continue;
        };
        let name = scoped(scope, &rest);
        match params.get(name.as_str()) {
            _ if given.contains(&name) => problems.push(format!(
                "`{tv_name}` would be `{name}`, which another tensor of the file already gives"
            )),
            None => problems.push(format!(
                "`{tv_name}` {shape:?} would be `{name}`, which is not a parameter of the network"
            )),
            Some((dims, _)) if *dims != shape.as_slice() => problems.push(format!(
                "`{tv_name}` has shape {shape:?}; `{name}` needs {dims:?}"
            )),
            Some(_) => {
                weights
                    .tensors
                    .insert(name.clone(), (shape.clone(), data.clone()));
                imported.push(name.clone());
            }
        }
        given.insert(name);
    }
    given
}

/// The problems of an import as one diagnostic naming the file.
fn mismatch(
    path: &Path,
    graph: &Graph,
    backbones: usize,
    dict: &StateDict,
    problems: &[String],
) -> Error {
    let mut d = Diagnostic::new(format!(
        "`{}` does not fit the {} of network `{}`",
        path.display(),
        if backbones > 1 {
            "backbones"
        } else {
            "backbone"
        },
        graph.name
    ));
    for p in problems.iter().take(SHOWN) {
        d = d.note(p.clone());
    }
    if problems.len() > SHOWN {
        d = d.note(format!("... and {} more", problems.len() - SHOWN));
    }
    let prefixed = !dict.tensors.is_empty()
        && dict
            .tensors
            .iter()
            .all(|(n, _, _)| n.starts_with("module."));
    let hint = if prefixed {
        "the names start with `module.` (a DataParallel checkpoint): save `{k.removeprefix(\"module.\"): v for k, v in state_dict.items()}` instead"
    } else {
        "the file must hold a torchvision/timm ResNet of the backbone's depth and widths (names such as `layer1.0.conv1.weight`): check `-D depth=...` and the width of `resnet(...)`"
    };
    Error::user(d.hint(hint))
}

/// Weights for every parameter of `graph`: each backbone filled from the torchvision
/// `state_dict` in `path`, everything else from the graph's rules under `seed`.
pub fn import_torchvision(graph: &Graph, path: &Path, seed: u64) -> Result<Imported, Error> {
    let backbones = backbone_scopes(graph);
    if backbones.is_empty() {
        return Err(Diagnostic::new(format!(
            "network `{}` has no ResNet backbone to import `{}` into",
            graph.name,
            path.display()
        ))
        .note("a backbone is a scope `X` with parameters `X.conv1.weight` and `X.layer1.unit0.conv1.weight`, as `resnet(...) as X` of std.resnet makes")
        .into());
    }
    check_style(graph, &backbones)?;
    let dict = read_state_dict(path)?;
    let params = parameters(graph);
    let mut weights = init_weights(graph, seed);
    let (imported, problems) = place(&dict, &backbones, &params, &mut weights);
    if !problems.is_empty() {
        return Err(mismatch(path, graph, backbones.len(), &dict, &problems));
    }
    let initialised = param_order(graph)
        .into_iter()
        .filter(|n| !backbones.iter().any(|b| in_scope(n, b)))
        .map(str::to_string)
        .collect();
    Ok(Imported {
        weights,
        backbones,
        imported,
        initialised,
        ignored: dict.ignored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        let cases = [
            ("conv1.weight", "conv1.weight"),
            ("bn1.running_var", "bn1.running_var"),
            ("layer1.0.conv1.weight", "layer1.unit0.conv1.weight"),
            ("layer3.12.bn2.bias", "layer3.unit12.bn2.bias"),
            (
                "layer2.0.downsample.0.weight",
                "layer2.unit0.downsample.conv.weight",
            ),
            (
                "layer4.0.downsample.1.running_mean",
                "layer4.unit0.downsample.bn.running_mean",
            ),
        ];
        for (tv, rfn) in cases {
            assert_eq!(torchvision_to_rfnc(tv), Mapped::Param(rfn.to_string()));
            assert_eq!(rfnc_to_torchvision(rfn), tv);
        }
        assert_eq!(torchvision_to_rfnc("fc.weight"), Mapped::Ignored);
        assert_eq!(
            torchvision_to_rfnc("layer1.0.bn1.num_batches_tracked"),
            Mapped::Ignored
        );
        assert_eq!(
            torchvision_to_rfnc("module.conv1.weight"),
            Mapped::Param("module.conv1.weight".into())
        );
    }

    #[test]
    fn half_and_bfloat_widen_exactly() {
        let cases: [(u16, f32); 8] = [
            (0x0000, 0.0),
            (0x3c00, 1.0),
            (0xc000, -2.0),
            (0x3555, 0.333_251_95),
            (0x7bff, 65504.0),
            (0x0001, 5.960_464_5e-8),
            (0x8200, -3.051_757_8e-5),
            (0xfc00, f32::NEG_INFINITY),
        ];
        for (h, f) in cases {
            assert_eq!(f16_to_f32(h), f, "{h:#06x}");
        }
        assert!(f16_to_f32(0x7e00).is_nan());
        let bf = to_f32(Dtype::BF16, &[0x80, 0x3f, 0x40, 0xc0]).unwrap();
        assert_eq!(bf, vec![1.0, -3.0]);
        assert!(to_f32(Dtype::I64, &[0; 8]).is_none());
    }

    #[test]
    fn components_stop_above_the_backbones() {
        let backbones = vec!["enc.backbone".to_string(), "backbone".to_string()];
        assert_eq!(
            component_of("refine4.adapt0.conv.weight", &backbones),
            "refine4"
        );
        assert_eq!(component_of("enc.proj.weight", &backbones), "enc.proj");
        assert_eq!(component_of("head.bias", &backbones), "head");
    }
}
