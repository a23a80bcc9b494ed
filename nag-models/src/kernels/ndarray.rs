//! The kernels on burn-ndarray f32 tensors: moving a generic `Tensor<B, D>` to burn-ndarray's
//! (or burn-autodiff's) tensor type when `B` is that backend, running a slice kernel, and, under
//! autodiff, registering the kernel's backward as the op's gradient step.
//!
//! Every function returns the input unchanged (`Err`) when `B` is another backend or the tensor
//! holds another dtype, so the caller falls back to the plain ops.

use core::any::{Any, TypeId};
use std::sync::Arc;

use burn::tensor::backend::{Backend, BackendTypes};
use burn::tensor::{Tensor, TensorMetadata, TensorPrimitive};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_autodiff::Autodiff;
use burn_ndarray::{NdArray, NdArrayTensor};

use super::attention::{self, AttentionShape};
use super::{attention_scale, gelu};

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

fn is_f32(tensor: &NdArrayTensor) -> bool {
    matches!(tensor, NdArrayTensor::F32(_))
}

/// `tensor` as burn-ndarray's f32 tensor, if `B` is burn-ndarray and the dtype f32.
fn into_cpu<B: Backend, const D: usize>(
    tensor: Tensor<B, D>,
) -> Result<NdArrayTensor, Tensor<B, D>> {
    if TypeId::of::<B::FloatTensorPrimitive>() != TypeId::of::<NdArrayTensor>() {
        return Err(tensor);
    }
    let primitive = tensor.into_primitive().tensor();
    match cast::<_, NdArrayTensor>(primitive) {
        Ok(t) if is_f32(&t) => Ok(t),
        Ok(t) => Err(from_primitive(t)),
        Err(p) => Err(Tensor::from_primitive(TensorPrimitive::Float(p))),
    }
}

/// `tensor` as burn-autodiff's tensor over burn-ndarray f32, if `B` is that backend.
fn into_autodiff<B: Backend, const D: usize>(
    tensor: Tensor<B, D>,
) -> Result<AutodiffTensor, Tensor<B, D>> {
    if TypeId::of::<B>() != TypeId::of::<CpuAutodiff>() {
        return Err(tensor);
    }
    let primitive = tensor.into_primitive().tensor();
    match cast::<_, AutodiffTensor>(primitive) {
        Ok(t) if is_f32(&t.primitive) => Ok(t),
        Ok(t) => Err(from_primitive(t)),
        Err(p) => Err(Tensor::from_primitive(TensorPrimitive::Float(p))),
    }
}

/// A primitive of `B` (type already checked) back into a tensor.
fn from_primitive<B: Backend, const D: usize, P: 'static>(primitive: P) -> Tensor<B, D> {
    let primitive = cast::<P, B::FloatTensorPrimitive>(primitive)
        .ok()
        .expect("the primitive is B's: its type was checked");
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
    let scale = attention_scale(shape.head_dim);
    let out_dims = [shape.n, shape.len, shape.width()];
    let qkv = match into_cpu(qkv) {
        Ok(qkv) => {
            let mut out = vec![0.0f32; shape.out_len()];
            with_f32(&qkv, |v| {
                attention::forward(shape, scale, v, &mut out, None)
            });
            return Ok(from_primitive(ndarray_tensor(out, &out_dims)));
        }
        Err(qkv) => qkv,
    };
    let qkv = into_autodiff(qkv)?;
    let mut out = vec![0.0f32; shape.out_len()];
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
    let x = match into_cpu(x) {
        Ok(x) => {
            let y = with_f32(&x, gelu::forward);
            return Ok(from_primitive(ndarray_tensor(y, &dims(&x))));
        }
        Err(x) => x,
    };
    let x = into_autodiff(x)?;
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
