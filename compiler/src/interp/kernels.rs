//! The semantics of every op as plain loops. Clarity over speed: this is the oracle that
//! compiled kernels, fused kernels and planned memory are checked against.
//!
//! Conventions (see docs/ir.md): NCHW layout; `pad` is [top, left, bottom, right];
//! max pooling pads with -inf and sends gradients to the first maximal element of a window
//! in row-major order; average pooling divides by the whole window (`count_include_pad`)
//! or by its cells inside the input; bilinear resize follows PyTorch (`align_corners = false`:
//! `src = max(0, (dst + 0.5) * in / out - 0.5)`; `true`: `src = dst * (in - 1) / (out - 1)`).

use super::tensor::{Real, Tensor};
use crate::ir::Reduction;
use crate::rng::dropout_keep;

#[derive(Clone, Copy)]
pub struct ConvGeometry {
    pub stride: [u64; 2],
    pub pad: [u64; 4],
    pub dilation: [u64; 2],
    pub groups: u64,
}

impl ConvGeometry {
    /// Input coordinate read by output `o` through kernel tap `k` along axis `a`, if inside.
    fn source(&self, a: usize, o: usize, k: usize, size: usize) -> Option<usize> {
        let pos = (o * self.stride[a] as usize + k * self.dilation[a] as usize) as i64
            - self.pad[a] as i64;
        (pos >= 0 && (pos as usize) < size).then_some(pos as usize)
    }
}

/// Visits every (output element, weight element, input element) triple of a convolution:
/// `f(y_index, w_index, x_index)`. All three conv kernels are this one loop nest.
fn conv_visit(
    x: [usize; 4],
    w: [usize; 4],
    y: [usize; 4],
    g: &ConvGeometry,
    mut f: impl FnMut(usize, usize, usize),
) {
    let [n, cin, h, wd] = x;
    let [cout, cin_g, kh, kw] = w;
    let [_, _, oh, ow] = y;
    let cout_g = cout / g.groups as usize;
    for b in 0..n {
        for co in 0..cout {
            let group = co / cout_g;
            for ci in 0..cin_g {
                let c = group * cin_g + ci;
                debug_assert!(c < cin);
                for ky in 0..kh {
                    for kx in 0..kw {
                        let wi = ((co * cin_g + ci) * kh + ky) * kw + kx;
                        for oy in 0..oh {
                            let Some(iy) = g.source(0, oy, ky, h) else {
                                continue;
                            };
                            for ox in 0..ow {
                                let Some(ix) = g.source(1, ox, kx, wd) else {
                                    continue;
                                };
                                let yi = ((b * cout + co) * oh + oy) * ow + ox;
                                let xi = ((b * cin + c) * h + iy) * wd + ix;
                                f(yi, wi, xi);
                            }
                        }
                    }
                }
            }
        }
    }
}

pub fn conv2d<T: Real>(
    x: &Tensor<T>,
    w: &Tensor<T>,
    bias: Option<&Tensor<T>>,
    g: &ConvGeometry,
    out: &[u64],
) -> Tensor<T> {
    let mut y = Tensor::filled(out.to_vec(), T::zero());
    let out4 = y.nchw();
    conv_visit(x.nchw(), w.nchw(), out4, g, |yi, wi, xi| {
        y.data[yi] = y.data[yi] + x.data[xi] * w.data[wi]
    });
    if let Some(b) = bias {
        let plane = out4[2] * out4[3];
        for (i, v) in y.data.iter_mut().enumerate() {
            *v = *v + b.data[(i / plane) % out4[1]];
        }
    }
    y
}

pub fn conv2d_grad_input<T: Real>(
    dy: &Tensor<T>,
    w: &Tensor<T>,
    g: &ConvGeometry,
    x_dims: &[u64],
) -> Tensor<T> {
    let mut dx = Tensor::filled(x_dims.to_vec(), T::zero());
    let x4 = dx.nchw();
    conv_visit(x4, w.nchw(), dy.nchw(), g, |yi, wi, xi| {
        dx.data[xi] = dx.data[xi] + dy.data[yi] * w.data[wi]
    });
    dx
}

pub fn conv2d_grad_weight<T: Real>(
    x: &Tensor<T>,
    dy: &Tensor<T>,
    g: &ConvGeometry,
    w_dims: &[u64],
) -> Tensor<T> {
    let mut dw = Tensor::filled(w_dims.to_vec(), T::zero());
    let w4 = dw.nchw();
    conv_visit(x.nchw(), w4, dy.nchw(), g, |yi, wi, xi| {
        dw.data[wi] = dw.data[wi] + dy.data[yi] * x.data[xi]
    });
    dw
}

pub fn channel_sum<T: Real>(dy: &Tensor<T>) -> Tensor<T> {
    let [n, c, h, w] = dy.nchw();
    let mut out = Tensor::filled(vec![c as u64], T::zero());
    for b in 0..n {
        for ch in 0..c {
            let start = (b * c + ch) * h * w;
            out.data[ch] = out.data[ch] + dy.data[start..start + h * w].iter().copied().sum();
        }
    }
    out
}

/// Per-channel scale `gamma / sqrt(var + eps)` of frozen batch norm.
fn bn_scale<T: Real>(var: &Tensor<T>, gamma: &Tensor<T>, eps: f64) -> Vec<T> {
    var.data
        .iter()
        .zip(&gamma.data)
        .map(|(&v, &g)| g / (v + T::of(eps)).sqrt())
        .collect()
}

pub fn batch_norm<T: Real>(
    x: &Tensor<T>,
    mean: &Tensor<T>,
    var: &Tensor<T>,
    gamma: &Tensor<T>,
    beta: &Tensor<T>,
    eps: f64,
) -> Tensor<T> {
    let [_, c, h, w] = x.nchw();
    let scale = bn_scale(var, gamma, eps);
    let data = x.data.iter().enumerate().map(|(i, &v)| {
        let ch = (i / (h * w)) % c;
        (v - mean.data[ch]) * scale[ch] + beta.data[ch]
    });
    Tensor::new(x.dims.clone(), data.collect())
}

pub fn fold_bn_weight<T: Real>(
    w: &Tensor<T>,
    var: &Tensor<T>,
    gamma: &Tensor<T>,
    eps: f64,
) -> Tensor<T> {
    let scale = bn_scale(var, gamma, eps);
    let per_out = w.data.len() / scale.len();
    Tensor::new(
        w.dims.clone(),
        w.data
            .iter()
            .enumerate()
            .map(|(i, &v)| v * scale[i / per_out])
            .collect(),
    )
}

pub fn fold_bn_bias<T: Real>(
    mean: &Tensor<T>,
    var: &Tensor<T>,
    gamma: &Tensor<T>,
    beta: &Tensor<T>,
    bias: Option<&Tensor<T>>,
    eps: f64,
) -> Tensor<T> {
    let scale = bn_scale(var, gamma, eps);
    let data = (0..scale.len()).map(|c| {
        let b = bias.map_or(T::zero(), |b| b.data[c]);
        (b - mean.data[c]) * scale[c] + beta.data[c]
    });
    Tensor::new(mean.dims.clone(), data.collect())
}

pub fn batch_norm_grad<T: Real>(
    dy: &Tensor<T>,
    var: &Tensor<T>,
    gamma: &Tensor<T>,
    eps: f64,
) -> Tensor<T> {
    let [_, c, h, w] = dy.nchw();
    let scale = bn_scale(var, gamma, eps);
    let data = dy
        .data
        .iter()
        .enumerate()
        .map(|(i, &v)| v * scale[(i / (h * w)) % c]);
    Tensor::new(dy.dims.clone(), data.collect())
}

pub fn map<T: Real>(x: &Tensor<T>, f: impl Fn(T) -> T) -> Tensor<T> {
    Tensor::new(x.dims.clone(), x.data.iter().map(|&v| f(v)).collect())
}

pub fn zip<T: Real>(a: &Tensor<T>, b: &Tensor<T>, f: impl Fn(T, T) -> T) -> Tensor<T> {
    Tensor::new(
        a.dims.clone(),
        a.data.iter().zip(&b.data).map(|(&x, &y)| f(x, y)).collect(),
    )
}

/// The first maximal element of each pooling window (row-major), as a flat input index per
/// output element; `None` for a window that lies entirely in the padding (cannot happen
/// when pad <= kernel / 2, which shape inference enforces).
fn pool_argmax<T: Real>(
    x: &Tensor<T>,
    kernel: [u64; 2],
    stride: [u64; 2],
    pad: [u64; 4],
    out: [usize; 4],
) -> Vec<Option<usize>> {
    let [n, c, h, w] = x.nchw();
    let [_, _, oh, ow] = out;
    let mut result = Vec::with_capacity(n * c * oh * ow);
    for plane in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut best: Option<(T, usize)> = None;
                for ky in 0..kernel[0] as usize {
                    let iy = (oy * stride[0] as usize + ky) as i64 - pad[0] as i64;
                    if iy < 0 || iy as usize >= h {
                        continue;
                    }
                    for kx in 0..kernel[1] as usize {
                        let ix = (ox * stride[1] as usize + kx) as i64 - pad[1] as i64;
                        if ix < 0 || ix as usize >= w {
                            continue;
                        }
                        let i = (plane * h + iy as usize) * w + ix as usize;
                        if best.is_none_or(|(v, _)| x.data[i] > v) {
                            best = Some((x.data[i], i));
                        }
                    }
                }
                result.push(best.map(|(_, i)| i));
            }
        }
    }
    result
}

pub fn max_pool2d<T: Real>(
    x: &Tensor<T>,
    kernel: [u64; 2],
    stride: [u64; 2],
    pad: [u64; 4],
    out: &[u64],
) -> Tensor<T> {
    let o = [
        out[0] as usize,
        out[1] as usize,
        out[2] as usize,
        out[3] as usize,
    ];
    let arg = pool_argmax(x, kernel, stride, pad, o);
    Tensor::new(
        out.to_vec(),
        arg.iter()
            .map(|a| a.map_or(T::neg_infinity(), |i| x.data[i]))
            .collect(),
    )
}

pub fn max_pool2d_grad<T: Real>(
    dy: &Tensor<T>,
    x: &Tensor<T>,
    kernel: [u64; 2],
    stride: [u64; 2],
    pad: [u64; 4],
) -> Tensor<T> {
    let arg = pool_argmax(x, kernel, stride, pad, dy.nchw());
    let mut dx = Tensor::filled(x.dims.clone(), T::zero());
    for (o, a) in arg.iter().enumerate() {
        if let Some(i) = a {
            dx.data[*i] = dx.data[*i] + dy.data[o];
        }
    }
    dx
}

/// The geometry of an average pooling: window, stride, pad (`[top, left, bottom, right]`)
/// and whether padding cells count in the divisor.
#[derive(Clone, Copy)]
pub struct AvgPool {
    pub kernel: [u64; 2],
    pub stride: [u64; 2],
    pub pad: [u64; 4],
    pub count_include_pad: bool,
}

impl AvgPool {
    /// The input rows (or columns, `axis` 1) of window position `o`: `lo..hi`, clipped to
    /// the input's `size`.
    fn cells(&self, axis: usize, o: usize, size: usize) -> (usize, usize) {
        let start = (o * self.stride[axis] as usize) as i64 - self.pad[axis] as i64;
        let end = start + self.kernel[axis] as i64;
        (start.max(0) as usize, end.clamp(0, size as i64) as usize)
    }

    /// Visits every output element with the input cells of its window and its divisor:
    /// `f(output index, input indices, divisor)`.
    fn visit<T: Real>(
        &self,
        x: [usize; 4],
        out: [usize; 2],
        mut f: impl FnMut(usize, &mut dyn Iterator<Item = usize>, T),
    ) {
        let [n, c, h, w] = x;
        let [oh, ow] = out;
        for plane in 0..n * c {
            for oy in 0..oh {
                let (y0, y1) = self.cells(0, oy, h);
                for ox in 0..ow {
                    let (x0, x1) = self.cells(1, ox, w);
                    let divisor = if self.count_include_pad {
                        self.kernel[0] * self.kernel[1]
                    } else {
                        ((y1 - y0) * (x1 - x0)) as u64
                    };
                    let mut inputs =
                        (y0..y1).flat_map(|yy| (x0..x1).map(move |xx| (plane * h + yy) * w + xx));
                    f(
                        (plane * oh + oy) * ow + ox,
                        &mut inputs,
                        T::of(divisor as f64),
                    );
                }
            }
        }
    }
}

/// Average pooling: the sum of each window's cells inside the input, divided by `kh * kw`
/// (`count_include_pad`) or by the number of those cells.
pub fn avg_pool2d<T: Real>(x: &Tensor<T>, pool: &AvgPool, out: &[u64]) -> Tensor<T> {
    let mut y = Tensor::filled(out.to_vec(), T::zero());
    pool.visit::<T>(
        x.nchw(),
        [out[2] as usize, out[3] as usize],
        |o, inputs, divisor| {
            let sum: T = inputs.map(|i| x.data[i]).sum();
            y.data[o] = sum / divisor;
        },
    );
    y
}

/// The adjoint of [`avg_pool2d`]: each `dy` divided by its window's divisor and added to
/// the window's cells inside the input (`x_dims`).
pub fn avg_pool2d_grad<T: Real>(dy: &Tensor<T>, pool: &AvgPool, x_dims: &[u64]) -> Tensor<T> {
    let mut dx = Tensor::filled(x_dims.to_vec(), T::zero());
    let [_, _, oh, ow] = dy.nchw();
    pool.visit::<T>(dx.nchw(), [oh, ow], |o, inputs, divisor| {
        let g = dy.data[o] / divisor;
        for i in inputs {
            dx.data[i] = dx.data[i] + g;
        }
    });
    dx
}

/// The operands one after the other along the channels.
pub fn concat<T: Real>(xs: &[&Tensor<T>], out: &[u64]) -> Tensor<T> {
    let (n, plane) = (out[0] as usize, (out[2] * out[3]) as usize);
    let mut data = Vec::with_capacity(out.iter().product::<u64>() as usize);
    for b in 0..n {
        for x in xs {
            let chunk = x.dims[1] as usize * plane;
            data.extend_from_slice(&x.data[b * chunk..(b + 1) * chunk]);
        }
    }
    Tensor::new(out.to_vec(), data)
}

/// Channels `start..start + size` of an NCHW tensor.
pub fn slice_channels<T: Real>(x: &Tensor<T>, start: u64, size: u64) -> Tensor<T> {
    let [n, c, h, w] = x.nchw();
    let (start, size, plane) = (start as usize, size as usize, h * w);
    let mut data = Vec::with_capacity(n * size * plane);
    for b in 0..n {
        let from = (b * c + start) * plane;
        data.extend_from_slice(&x.data[from..from + size * plane]);
    }
    Tensor::new(vec![n as u64, size as u64, h as u64, w as u64], data)
}

/// The two source indices and the weight of the second along one axis of a bilinear resize.
fn bilinear_taps(
    dst: usize,
    input: usize,
    output: usize,
    align_corners: bool,
) -> (usize, usize, f64) {
    let src = if align_corners {
        if output > 1 {
            dst as f64 * (input - 1) as f64 / (output - 1) as f64
        } else {
            0.0
        }
    } else {
        ((dst as f64 + 0.5) * input as f64 / output as f64 - 0.5).max(0.0)
    };
    let i0 = (src.floor() as usize).min(input - 1);
    let i1 = (i0 + 1).min(input - 1);
    (i0, i1, src - i0 as f64)
}

/// Visits `(output index, input index, weight)` for every bilinear tap.
fn bilinear_visit(
    x: [usize; 4],
    out: [usize; 2],
    align_corners: bool,
    mut f: impl FnMut(usize, usize, f64),
) {
    let [n, c, h, w] = x;
    let [oh, ow] = out;
    for plane in 0..n * c {
        for oy in 0..oh {
            let (y0, y1, ly) = bilinear_taps(oy, h, oh, align_corners);
            for ox in 0..ow {
                let (x0, x1, lx) = bilinear_taps(ox, w, ow, align_corners);
                let o = (plane * oh + oy) * ow + ox;
                let at = |yy: usize, xx: usize| (plane * h + yy) * w + xx;
                f(o, at(y0, x0), (1.0 - ly) * (1.0 - lx));
                f(o, at(y0, x1), (1.0 - ly) * lx);
                f(o, at(y1, x0), ly * (1.0 - lx));
                f(o, at(y1, x1), ly * lx);
            }
        }
    }
}

pub fn resize_bilinear<T: Real>(x: &Tensor<T>, size: [u64; 2], align_corners: bool) -> Tensor<T> {
    let [n, c, _, _] = x.nchw();
    let mut y = Tensor::filled(vec![n as u64, c as u64, size[0], size[1]], T::zero());
    bilinear_visit(
        x.nchw(),
        [size[0] as usize, size[1] as usize],
        align_corners,
        |o, i, wgt| y.data[o] = y.data[o] + x.data[i] * T::of(wgt),
    );
    y
}

pub fn resize_bilinear_grad<T: Real>(
    dy: &Tensor<T>,
    input_size: [u64; 2],
    align_corners: bool,
) -> Tensor<T> {
    let [n, c, oh, ow] = dy.nchw();
    let mut dx = Tensor::filled(
        vec![n as u64, c as u64, input_size[0], input_size[1]],
        T::zero(),
    );
    let x4 = dx.nchw();
    bilinear_visit(x4, [oh, ow], align_corners, |o, i, wgt| {
        dx.data[i] = dx.data[i] + dy.data[o] * T::of(wgt)
    });
    dx
}

/// Why a loss cannot be computed from the data it was given.
#[derive(Debug, Clone, PartialEq)]
pub struct DataError(pub String);

/// The factor a loss is multiplied by: 1 for a sum, 1/count for a mean (0 with no count).
fn reduction_scale<T: Real>(reduction: Reduction, count: usize) -> T {
    match reduction {
        Reduction::Sum => T::one(),
        Reduction::Mean if count == 0 => T::zero(),
        Reduction::Mean => T::one() / T::of(count as f64),
    }
}

/// Softmax cross-entropy and, when `dloss` is given, its gradient w.r.t. the logits.
/// Pixels labelled `ignore` count for nothing; `Mean` divides by the pixels that count
/// (the loss and gradient are 0 when none do).
pub fn softmax_cross_entropy<T: Real>(
    logits: &Tensor<T>,
    labels: &Tensor<i32>,
    ignore: i64,
    reduction: Reduction,
    dloss: Option<T>,
) -> Result<(T, Option<Tensor<T>>), DataError> {
    let [n, c, h, w] = logits.nchw();
    let plane = h * w;
    let mut total = T::zero();
    let mut count = 0usize;
    let mut grad = dloss.map(|_| Tensor::filled(logits.dims.clone(), T::zero()));
    for b in 0..n {
        for p in 0..plane {
            let label = labels.data[b * plane + p] as i64;
            if label == ignore {
                continue;
            }
            if label < 0 || label as usize >= c {
                return Err(DataError(format!(
                    "label {label} is outside 0..{c} and is not the ignore label {ignore}"
                )));
            }
            let at = |ch: usize| (b * c + ch) * plane + p;
            let max = (0..c)
                .map(|ch| logits.data[at(ch)])
                .fold(T::neg_infinity(), T::max);
            let sum: T = (0..c).map(|ch| (logits.data[at(ch)] - max).exp()).sum();
            total = total + (sum.ln() + max - logits.data[at(label as usize)]);
            count += 1;
            if let Some(g) = grad.as_mut() {
                for ch in 0..c {
                    let softmax = (logits.data[at(ch)] - max).exp() / sum;
                    g.data[at(ch)] = softmax
                        - if ch == label as usize {
                            T::one()
                        } else {
                            T::zero()
                        };
                }
            }
        }
    }
    let scale = reduction_scale::<T>(reduction, count);
    if let (Some(g), Some(d)) = (grad.as_mut(), dloss) {
        for v in g.data.iter_mut() {
            *v = *v * scale * d;
        }
    }
    Ok((total * scale, grad))
}

/// Least squares `sum (pred - target)^2` over pixels whose target is not `ignore`, and its
/// gradient w.r.t. the prediction when `dloss` is given.
pub fn least_squares<T: Real>(
    pred: &Tensor<T>,
    target: &Tensor<T>,
    ignore: f64,
    reduction: Reduction,
    dloss: Option<T>,
) -> (T, Option<Tensor<T>>) {
    let valid = |t: T| t.f64() != ignore;
    let count = target.data.iter().filter(|&&t| valid(t)).count();
    let scale = reduction_scale::<T>(reduction, count);
    let total: T = pred
        .data
        .iter()
        .zip(&target.data)
        .filter(|(_, &t)| valid(t))
        .map(|(&p, &t)| (p - t) * (p - t))
        .sum();
    let grad = dloss.map(|d| {
        zip(pred, target, |p, t| {
            if valid(t) {
                T::of(2.0) * (p - t) * scale * d
            } else {
                T::zero()
            }
        })
    });
    (total * scale, grad)
}

pub fn dropout<T: Real>(x: &Tensor<T>, rate: f64, seed: u64, step: u64, stream: u64) -> Tensor<T> {
    let scale = T::of(1.0 / (1.0 - rate));
    let data = x.data.iter().enumerate().map(|(i, &v)| {
        if dropout_keep(rate, seed, step, stream, i as u64) {
            v * scale
        } else {
            T::zero()
        }
    });
    Tensor::new(x.dims.clone(), data.collect())
}
