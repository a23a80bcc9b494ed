//! The kernels on burn-ndarray f32 tensors: moving a generic `Tensor<B, D>` to burn-ndarray's
//! (or burn-autodiff's) tensor type when `B` is that backend, running a slice kernel, and, under
//! autodiff, registering the kernel's backward as the op's gradient step.
//!
//! Every function returns the input unchanged (`Err`) when `B` is another backend or the tensor
//! holds another dtype, so the caller falls back to the plain ops.

use core::any::{Any, TypeId};
use std::sync::Arc;

use burn::tensor::backend::{Backend, BackendTypes};
use burn::tensor::{DType, Tensor, TensorMetadata, TensorPrimitive};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_autodiff::{Autodiff, NodeId};
use burn_ndarray::{NdArray, NdArrayTensor};

use super::attention::{self, AttentionShape};
use super::layer_norm::{self, Normalized, RowsShape};
use super::{attention_scale, gelu, linear};

/// The CPU backend the kernels serve (burn-ndarray, f32).
pub(crate) type Cpu = NdArray<f32>;
/// Its autodiff backend as training uses it (burn's default: no checkpointing).
pub(crate) type CpuAutodiff = Autodiff<Cpu>;
/// Its autodiff tensor (burn-autodiff's `AutodiffTensor`, named through the backend because
/// burn-autodiff does not export the type's path).
type AutodiffTensor = <CpuAutodiff as BackendTypes>::FloatTensorPrimitive;

/// Moves `value` into a `U` when `T` is `U` (checked by `TypeId`), else gives it back.
fn cast<T: 'static, U: 'static>(value: T) -> Result<U, T> {
    let mut slot = Some(value);
    match (&mut slot as &mut dyn Any).downcast_mut::<Option<U>>() {
        Some(u) => Ok(u.take().expect("the slot was just filled")),
        None => Err(slot.expect("the slot is untouched")),
    }
}

/// Which kernel path a call takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// burn-ndarray, f32.
    Cpu,
    /// burn's default autodiff over burn-ndarray, f32.
    CpuAutodiff,
}

/// The path for backend `B` and tensors of `dtypes`, or `None` (plain ops).
fn path<B: Backend>(dtypes: &[DType]) -> Option<Path> {
    if dtypes.iter().any(|d| *d != DType::F32) {
        None
    } else if TypeId::of::<B::FloatTensorPrimitive>() == TypeId::of::<NdArrayTensor>() {
        Some(Path::Cpu)
    } else if TypeId::of::<B>() == TypeId::of::<CpuAutodiff>() {
        Some(Path::CpuAutodiff)
    } else {
        None
    }
}

/// `tensor`'s primitive as a `P` (its type checked by [`path`]).
fn primitive<B: Backend, const D: usize, P: 'static>(tensor: Tensor<B, D>) -> P {
    match cast(tensor.into_primitive().tensor()) {
        Ok(p) => p,
        Err(_) => unreachable!("the primitive's type was checked"),
    }
}

/// A primitive of `B` (type already checked) back into a tensor.
fn from_primitive<B: Backend, const D: usize, P: 'static>(primitive: P) -> Tensor<B, D> {
    let primitive = match cast::<P, B::FloatTensorPrimitive>(primitive) {
        Ok(p) => p,
        Err(_) => unreachable!("the primitive is B's: its type was checked"),
    };
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
}

/// Runs `f` on the f32 values of an ndarray tensor in row-major order (borrowed when the
/// storage is already contiguous).
fn with_f32<R>(tensor: &NdArrayTensor, f: impl FnOnce(&[f32]) -> R) -> R {
    match tensor {
        NdArrayTensor::F32(storage) => {
            let view = storage.view();
            match view.as_slice() {
                Some(values) => f(values),
                None => f(&view.iter().copied().collect::<Vec<_>>()),
            }
        }
        other => unreachable!("an f32 kernel got a {:?} tensor", other.dtype()),
    }
}

fn dims(tensor: &NdArrayTensor) -> Vec<usize> {
    tensor.shape().to_vec()
}

/// An f32 ndarray tensor of `shape` from row-major `values`.
fn ndarray_tensor(values: Vec<f32>, shape: &[usize]) -> NdArrayTensor {
    let array = ndarray::ArcArray::from_shape_vec(ndarray::IxDyn(shape), values)
        .expect("the kernel wrote exactly the output's elements");
    NdArrayTensor::from(array)
}

/// [`super::attention_qkv`] on burn-ndarray f32, plain or under autodiff.
pub(crate) fn attention<B: Backend>(
    qkv: Tensor<B, 3>,
    shape: AttentionShape,
) -> Result<Tensor<B, 3>, Tensor<B, 3>> {
    let Some(path) = path::<B>(&[qkv.dtype()]) else {
        return Err(qkv);
    };
    let scale = attention_scale(shape.head_dim);
    let out_dims = [shape.n, shape.len, shape.width()];
    let mut out = vec![0.0f32; shape.out_len()];
    if path == Path::Cpu {
        let qkv: NdArrayTensor = primitive(qkv);
        with_f32(&qkv, |v| {
            attention::forward(shape, scale, v, &mut out, None)
        });
        return Ok(from_primitive(ndarray_tensor(out, &out_dims)));
    }
    let qkv: AutodiffTensor = primitive(qkv);
    let out = match AttentionBackward
        .prepare::<NoCheckpointing>([qkv.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let mut probs = vec![0.0f32; shape.probs_len()];
            with_f32(&qkv.primitive, |v| {
                attention::forward(shape, scale, v, &mut out, Some(&mut probs))
            });
            let saved = AttentionSaved {
                shape,
                qkv: qkv.primitive.clone(),
                probs: probs.into(),
            };
            prep.finish(saved, ndarray_tensor(out, &out_dims))
        }
        OpsKind::UnTracked(prep) => {
            with_f32(&qkv.primitive, |v| {
                attention::forward(shape, scale, v, &mut out, None)
            });
            prep.finish(ndarray_tensor(out, &out_dims))
        }
    };
    Ok(from_primitive(out))
}

/// What attention's backward keeps: the forward's input and probabilities.
#[derive(Debug, Clone)]
struct AttentionSaved {
    shape: AttentionShape,
    qkv: NdArrayTensor,
    probs: Arc<[f32]>,
}

/// The autodiff step of [`attention::backward`].
#[derive(Debug)]
struct AttentionBackward;

impl Backward<Cpu, 1> for AttentionBackward {
    type State = AttentionSaved;

    fn backward(self, ops: Ops<AttentionSaved, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let grad = grads.consume::<Cpu>(&ops.node);
        let Some(parent) = parent else { return };
        let AttentionSaved { shape, qkv, probs } = ops.state;
        let scale = attention_scale(shape.head_dim);
        let grad_qkv = with_f32(&qkv, |qkv| {
            with_f32(&grad, |g| attention::backward(shape, scale, qkv, &probs, g))
        });
        let grad_qkv = ndarray_tensor(grad_qkv, &dims(&qkv));
        grads.register::<Cpu>(parent.id, grad_qkv);
    }
}

/// [`super::gelu_tanh`] on burn-ndarray f32, plain or under autodiff.
pub(crate) fn gelu_tanh<B: Backend, const D: usize>(
    x: Tensor<B, D>,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    let Some(path) = path::<B>(&[x.dtype()]) else {
        return Err(x);
    };
    if path == Path::Cpu {
        let x: NdArrayTensor = primitive(x);
        let y = with_f32(&x, gelu::forward);
        return Ok(from_primitive(ndarray_tensor(y, &dims(&x))));
    }
    let x: AutodiffTensor = primitive(x);
    let y = with_f32(&x.primitive, gelu::forward);
    let y = ndarray_tensor(y, &dims(&x.primitive));
    let out = match GeluBackward
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(x.primitive.clone(), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Ok(from_primitive(out))
}

/// The autodiff step of [`gelu::backward`]; keeps the forward's input.
#[derive(Debug)]
struct GeluBackward;

impl Backward<Cpu, 1> for GeluBackward {
    type State = NdArrayTensor;

    fn backward(self, ops: Ops<NdArrayTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let grad = grads.consume::<Cpu>(&ops.node);
        let Some(parent) = parent else { return };
        let x = ops.state;
        let grad_x = with_f32(&x, |x| with_f32(&grad, |g| gelu::backward(x, g)));
        grads.register::<Cpu>(parent.id, ndarray_tensor(grad_x, &dims(&x)));
    }
}

/// `y = x·W + b` for `x: [.., k]` (the leading dims taken as `m` rows, read in place: burn-ndarray
/// 0.21 copies on every reshape), `W: [k, n]` → `[.., n]`, on burn-ndarray f32, plain or under
/// autodiff; the inputs back (`Err`) elsewhere.
#[allow(clippy::type_complexity)]
pub(crate) fn linear<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Result<Tensor<B, D>, (Tensor<B, D>, Tensor<B, 2>, Option<Tensor<B, 1>>)> {
    let mut dtypes = vec![x.dtype(), weight.dtype()];
    dtypes.extend(bias.as_ref().map(|b| b.dtype()));
    let Some(path) = path::<B>(&dtypes) else {
        return Err((x, weight, bias));
    };
    let x_dims = x.dims();
    let k = x_dims[D - 1];
    let m = x_dims[..D - 1].iter().product();
    let n = weight.dims()[1];
    let mkn = (m, k, n);
    let mut out_dims = x_dims;
    out_dims[D - 1] = n;
    let forward = |x: &NdArrayTensor, w: &NdArrayTensor, b: Option<&NdArrayTensor>| {
        let y = with_f32(x, |x| {
            with_f32(w, |w| match b {
                Some(b) => with_f32(b, |b| linear::forward(mkn, x, w, Some(b))),
                None => linear::forward(mkn, x, w, None),
            })
        });
        ndarray_tensor(y, &out_dims)
    };
    if path == Path::Cpu {
        let (x, w): (NdArrayTensor, NdArrayTensor) = (primitive(x), primitive(weight));
        let b: Option<NdArrayTensor> = bias.map(primitive);
        return Ok(from_primitive(forward(&x, &w, b.as_ref())));
    }
    let (x, w): (AutodiffTensor, AutodiffTensor) = (primitive(x), primitive(weight));
    let b: Option<AutodiffTensor> = bias.map(primitive);
    let y = forward(&x.primitive, &w.primitive, b.as_ref().map(|b| &b.primitive));
    let out = match b {
        Some(b) => match LinearBackward
            .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone(), b.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((mkn, x.primitive, w.primitive), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        },
        None => match LinearNoBiasBackward
            .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((mkn, x.primitive, w.primitive), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        },
    };
    Ok(from_primitive(out))
}

/// What the linear backward keeps: `(m, k, n)`, the input and the weight.
type LinearSaved = ((usize, usize, usize), NdArrayTensor, NdArrayTensor);

/// Registers `dx`, `dW` (and `db`) from the output gradient `grad` for the parents that are
/// tracked (`x`, `W`, `b`).
fn linear_backward(
    [x_id, w_id, b_id]: [Option<NodeId>; 3],
    grad: NdArrayTensor,
    (mkn, x, w): LinearSaved,
    grads: &mut Gradients,
) {
    let (_, k, n) = mkn;
    with_f32(&grad, |dy| {
        if let Some(id) = x_id {
            let dx = with_f32(&w, |w| linear::backward_x(mkn, w, dy));
            grads.register::<Cpu>(id, ndarray_tensor(dx, &dims(&x)));
        }
        if let Some(id) = w_id {
            let dw = with_f32(&x, |x| linear::backward_w(mkn, x, dy));
            grads.register::<Cpu>(id, ndarray_tensor(dw, &[k, n]));
        }
        if let Some(id) = b_id {
            grads.register::<Cpu>(id, ndarray_tensor(linear::backward_b(n, dy), &[n]));
        }
    });
}

/// The autodiff step of [`linear`] with a bias.
#[derive(Debug)]
struct LinearBackward;

impl Backward<Cpu, 3> for LinearBackward {
    type State = LinearSaved;

    fn backward(self, ops: Ops<LinearSaved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Cpu>(&ops.node);
        let ids = ops.parents.map(|p| p.map(|p| p.id));
        linear_backward(ids, grad, ops.state, grads);
    }
}

/// The autodiff step of [`linear`] without a bias.
#[derive(Debug)]
struct LinearNoBiasBackward;

impl Backward<Cpu, 2> for LinearNoBiasBackward {
    type State = LinearSaved;

    fn backward(self, ops: Ops<LinearSaved, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Cpu>(&ops.node);
        let [x, w] = ops.parents.map(|p| p.map(|p| p.id));
        linear_backward([x, w, None], grad, ops.state, grads);
    }
}

/// [`super::layer_norm_modulate`] on burn-ndarray f32, plain or under autodiff; the inputs back
/// (`Err`) elsewhere.
#[allow(clippy::type_complexity)]
pub(crate) fn layer_norm_modulate<B: Backend>(
    x: Tensor<B, 3>,
    shift: Tensor<B, 2>,
    scale: Tensor<B, 2>,
    eps: f64,
) -> Result<Tensor<B, 3>, (Tensor<B, 3>, Tensor<B, 2>, Tensor<B, 2>)> {
    let Some(path) = path::<B>(&[x.dtype(), shift.dtype(), scale.dtype()]) else {
        return Err((x, shift, scale));
    };
    let [n, tokens, width] = x.dims();
    let shape = RowsShape { n, tokens, width };
    let eps = eps as f32;
    let run = |x: &NdArrayTensor, shift: &NdArrayTensor, scale: &NdArrayTensor, keep: bool| {
        with_f32(x, |x| {
            with_f32(shift, |sh| {
                with_f32(scale, |sc| layer_norm::forward(shape, eps, x, sh, sc, keep))
            })
        })
    };
    if path == Path::Cpu {
        let (x, shift, scale): (NdArrayTensor, NdArrayTensor, NdArrayTensor) =
            (primitive(x), primitive(shift), primitive(scale));
        let (y, _) = run(&x, &shift, &scale, false);
        return Ok(from_primitive(ndarray_tensor(y, &[n, tokens, width])));
    }
    let (x, shift, scale): (AutodiffTensor, AutodiffTensor, AutodiffTensor) =
        (primitive(x), primitive(shift), primitive(scale));
    let out = match LayerNormModulateBackward
        .prepare::<NoCheckpointing>([x.node.clone(), shift.node.clone(), scale.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (y, kept) = run(&x.primitive, &shift.primitive, &scale.primitive, true);
            let saved = LayerNormSaved {
                shape,
                kept: Arc::new(kept.expect("kept on request")),
                scale: scale.primitive.clone(),
            };
            prep.finish(saved, ndarray_tensor(y, &[n, tokens, width]))
        }
        OpsKind::UnTracked(prep) => {
            let (y, _) = run(&x.primitive, &shift.primitive, &scale.primitive, false);
            prep.finish(ndarray_tensor(y, &[n, tokens, width]))
        }
    };
    Ok(from_primitive(out))
}

/// What the LayerNorm + modulate backward keeps.
#[derive(Debug, Clone)]
struct LayerNormSaved {
    shape: RowsShape,
    kept: Arc<Normalized>,
    scale: NdArrayTensor,
}

/// The autodiff step of [`layer_norm::backward`].
#[derive(Debug)]
struct LayerNormModulateBackward;

impl Backward<Cpu, 3> for LayerNormModulateBackward {
    type State = LayerNormSaved;

    fn backward(self, ops: Ops<LayerNormSaved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Cpu>(&ops.node);
        let [x_id, shift_id, scale_id] = ops.parents.map(|p| p.map(|p| p.id));
        let LayerNormSaved { shape, kept, scale } = ops.state;
        let (dx, dshift, dscale) = with_f32(&scale, |sc| {
            with_f32(&grad, |g| layer_norm::backward(shape, &kept, sc, g))
        });
        let RowsShape { n, tokens, width } = shape;
        for (id, values, dims) in [
            (x_id, dx, vec![n, tokens, width]),
            (shift_id, dshift, vec![n, width]),
            (scale_id, dscale, vec![n, width]),
        ] {
            if let Some(id) = id {
                grads.register::<Cpu>(id, ndarray_tensor(values, &dims));
            }
        }
    }
}
