//! Backend selection for `nag`.
//!
//! The rest of the workspace is generic over `B: Backend`; this crate is the one place that names
//! concrete backends. Which ones exist is decided by cargo features:
//!
//! | feature           | backend                        | device strings        |
//! |-------------------|--------------------------------|-----------------------|
//! | `ndarray` (default) | `burn-ndarray`, rayon (no `simd`: see `tests/exact_arithmetic.rs`) | `cpu` |
//! | `openblas-system` | the same, matmul through system OpenBLAS | `cpu`       |
//! | `flex`            | `burn-flex` (pure-Rust gemm)   | `flex`                |
//! | `cuda`            | `burn-cuda` (CubeCL + fusion)  | `cuda`, `cuda:N`      |
//!
//! A run picks its backend at run time from a device string ([`DeviceSpec::parse`]), and
//! [`dispatch`] monomorphises the caller's generic code for that backend. A device whose backend
//! was not compiled in is a clear error naming the feature to enable.

use core::fmt;
use core::str::FromStr;

pub use burn;
use burn::tensor::backend::AutodiffBackend;

/// The ndarray CPU backend (f32).
#[cfg(feature = "ndarray")]
pub type NdArray = burn_ndarray::NdArray<f32>;
/// The flex CPU backend.
#[cfg(feature = "flex")]
pub type Flex = burn_flex::Flex;
/// The CUDA backend (f32 floats, i32 ints, fused kernels).
#[cfg(feature = "cuda")]
pub type Cuda = burn_cuda::Cuda<f32, i32>;

/// The CUDA backend with bf16 floats (every float tensor, weights included: burn 0.21 has no
/// autocast, so this is whole-network half precision, not mixed precision).
#[cfg(feature = "cuda")]
pub type CudaBf16 = burn_cuda::Cuda<burn::tensor::bf16, i32>;

/// Autodiff wrapper used for training on backend `B`.
pub type Autodiff<B> = burn_autodiff::Autodiff<B>;

/// The inference backend of the default CPU build, for tests and small tools.
#[cfg(feature = "ndarray")]
pub type DefaultCpu = NdArray;

/// Errors from backend selection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackendError {
    /// The string does not name a device.
    #[error("unknown device '{0}': expected 'cpu', 'flex', 'cuda' or 'cuda:N'")]
    UnknownDevice(String),
    /// The device's backend was left out of this build.
    #[error("device '{device}' needs the {backend} backend, which this binary was built without; rebuild with that feature: `cargo run --release -p xtask --features {feature} -- …`")]
    NotCompiled {
        /// The device string as given.
        device: String,
        /// Backend name.
        backend: &'static str,
        /// Cargo feature that enables it.
        feature: &'static str,
    },
    /// Data-parallel devices of different backends.
    #[error(
        "--devices {0}: every replica must be on the same backend (e.g. cpu,cpu or cuda:0,cuda:1)"
    )]
    MixedDevices(String),
    /// No device in a list.
    #[error("--devices: no device given")]
    NoDevices,
    /// A precision the device's backend does not offer in this build.
    #[error("{precision} on device '{device}' is not available: the CPU backends compute in f32; bf16 needs a CUDA device (cuda:N)")]
    NoPrecision {
        /// The device string.
        device: String,
        /// The precision asked for.
        precision: Precision,
    },
    /// The NVIDIA driver library cannot be loaded (no GPU driver on this machine).
    #[error("device '{0}': the NVIDIA driver library (libcuda.so.1) cannot be loaded; is there an NVIDIA GPU and driver on this machine? Add the driver's folder to LD_LIBRARY_PATH, or use --device cpu")]
    NoCudaDriver(String),
    /// The CUDA backend failed inside (it reports by panicking): missing NVRTC or CUDA
    /// headers, an unsupported driver, out of memory.
    #[error("device '{device}': the CUDA backend failed: {message}. It needs NVRTC on LD_LIBRARY_PATH and the CUDA headers in $CUDA_PATH/include (scripts/gpu-check.sh shows where to find both in a PyTorch install)")]
    CudaFailed {
        /// The device string.
        device: String,
        /// The panic's message.
        message: String,
    },
    /// A precision name that is not one.
    #[error("unknown precision '{0}': expected f32 or bf16")]
    UnknownPrecision(String),
}

/// The float type a run computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats (every backend).
    F32,
    /// bfloat16 everywhere, weights and optimizer state included (CUDA only).
    Bf16,
}

impl FromStr for Precision {
    type Err = BackendError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            _ => Err(BackendError::UnknownPrecision(s.to_string())),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        })
    }
}

/// A device named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The ndarray CPU backend.
    Cpu,
    /// The flex CPU backend.
    Flex,
    /// CUDA GPU with this ordinal.
    Cuda(usize),
}

impl DeviceSpec {
    /// Parses `cpu`, `flex`, `cuda` (= `cuda:0`) or `cuda:N`, and checks that the backend for
    /// it is compiled into this binary.
    pub fn parse(s: &str) -> Result<Self, BackendError> {
        let spec = Self::parse_name(s)?;
        spec.ensure_compiled(s)?;
        Ok(spec)
    }

    /// How many independent pieces of work (training micro-batches, sampling batch chunks) to
    /// run at once on this device: one per core on the CPU backends, which are built without
    /// threads of their own (see the workspace manifest), and 1 on a GPU, which parallelises
    /// inside each kernel.
    pub fn concurrent_batches(self) -> usize {
        match self {
            Self::Cpu | Self::Flex => std::thread::available_parallelism().map_or(1, |n| n.get()),
            Self::Cuda(_) => 1,
        }
    }

    fn parse_name(s: &str) -> Result<Self, BackendError> {
        let lower = s.trim().to_ascii_lowercase();
        match lower.as_str() {
            "cpu" | "ndarray" => Ok(Self::Cpu),
            "flex" => Ok(Self::Flex),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => match other.strip_prefix("cuda:") {
                Some(n) => n
                    .parse::<usize>()
                    .map(Self::Cuda)
                    .map_err(|_| BackendError::UnknownDevice(s.to_string())),
                None => Err(BackendError::UnknownDevice(s.to_string())),
            },
        }
    }

    fn ensure_compiled(self, s: &str) -> Result<(), BackendError> {
        let (compiled, backend, feature) = match self {
            Self::Cpu => (cfg!(feature = "ndarray"), "ndarray", "ndarray"),
            Self::Flex => (cfg!(feature = "flex"), "flex", "flex"),
            Self::Cuda(_) => (cfg!(feature = "cuda"), "CUDA", "cuda"),
        };
        if compiled {
            Ok(())
        } else {
            Err(BackendError::NotCompiled {
                device: s.to_string(),
                backend,
                feature,
            })
        }
    }

    /// The device strings this build accepts.
    pub fn available() -> Vec<&'static str> {
        let mut v = Vec::new();
        if cfg!(feature = "ndarray") {
            v.push("cpu");
        }
        if cfg!(feature = "flex") {
            v.push("flex");
        }
        if cfg!(feature = "cuda") {
            v.push("cuda:N");
        }
        v
    }
}

impl FromStr for DeviceSpec {
    type Err = BackendError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Flex => write!(f, "flex"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Work that is generic over the backend. `B` is the autodiff (training) backend; inference code
/// uses `B::InnerBackend`.
pub trait BackendTask {
    /// What the task returns.
    type Output;
    /// Runs the task on backend `B` and `device`.
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output;
}

/// Runs `task` on the backend and device that `spec` names.
#[cfg_attr(
    not(any(feature = "ndarray", feature = "flex", feature = "cuda")),
    allow(unused)
)]
pub fn dispatch<T: BackendTask>(spec: DeviceSpec, task: T) -> Result<T::Output, BackendError> {
    spec.ensure_compiled(&spec.to_string())?;
    match spec {
        #[cfg(feature = "ndarray")]
        DeviceSpec::Cpu => Ok(task.run::<Autodiff<NdArray>>(burn_ndarray::NdArrayDevice::Cpu)),
        #[cfg(feature = "flex")]
        DeviceSpec::Flex => Ok(task.run::<Autodiff<Flex>>(burn_flex::FlexDevice)),
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(n) => on_cuda(spec, || {
            task.run::<Autodiff<Cuda>>(burn_cuda::CudaDevice::new(n))
        }),
        #[allow(unreachable_patterns)]
        _ => unreachable!("ensure_compiled rejects backends that are not compiled in"),
    }
}

/// Runs `f` on CUDA device `spec` after checking that the driver library loads, turning a
/// panic of the CUDA runtime (its way of reporting a missing library or a failed kernel
/// compilation) into [`BackendError::CudaFailed`].
#[cfg(feature = "cuda")]
fn on_cuda<R>(spec: DeviceSpec, f: impl FnOnce() -> R) -> Result<R, BackendError> {
    // SAFETY: loading the NVIDIA driver library runs only its initialisers, as CUDA's own
    // loader (cudarc) does when the backend starts.
    let driver = ["libcuda.so.1", "libcuda.so"]
        .iter()
        .any(|name| unsafe { libloading::Library::new(*name) }.is_ok());
    if !driver {
        return Err(BackendError::NoCudaDriver(spec.to_string()));
    }
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic without a message (see the lines above)".into());
        BackendError::CudaFailed {
            device: spec.to_string(),
            message,
        }
    })
}

/// [`dispatch`] at a chosen float precision: f32 is [`dispatch`] itself; bf16 runs on
/// [`CudaBf16`] and is an error on the CPU backends.
pub fn dispatch_precision<T: BackendTask>(
    spec: DeviceSpec,
    precision: Precision,
    task: T,
) -> Result<T::Output, BackendError> {
    spec.ensure_compiled(&spec.to_string())?;
    match (precision, spec) {
        (Precision::F32, _) => dispatch(spec, task),
        #[cfg(feature = "cuda")]
        (Precision::Bf16, DeviceSpec::Cuda(n)) => on_cuda(spec, || {
            task.run::<Autodiff<CudaBf16>>(burn_cuda::CudaDevice::new(n))
        }),
        #[allow(unreachable_patterns)]
        (precision, spec) => Err(BackendError::NoPrecision {
            device: spec.to_string(),
            precision,
        }),
    }
}

/// A task generic over the autodiff backend that runs on several devices of it (data-parallel
/// replicas).
pub trait DevicesTask {
    /// What the task returns.
    type Output;
    /// Runs the task on backend `B` and `devices` (at least one).
    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>) -> Self::Output;
}

/// Runs `task` on the devices `specs` names, which must share a backend.
#[cfg_attr(
    not(any(feature = "ndarray", feature = "flex", feature = "cuda")),
    allow(unused)
)]
pub fn dispatch_devices<T: DevicesTask>(
    specs: &[DeviceSpec],
    task: T,
) -> Result<T::Output, BackendError> {
    let Some(&first) = specs.first() else {
        return Err(BackendError::NoDevices);
    };
    let same =
        |a: DeviceSpec, b: DeviceSpec| core::mem::discriminant(&a) == core::mem::discriminant(&b);
    if !specs.iter().all(|&s| same(s, first)) {
        let list: Vec<String> = specs.iter().map(|s| s.to_string()).collect();
        return Err(BackendError::MixedDevices(list.join(",")));
    }
    first.ensure_compiled(&first.to_string())?;
    match first {
        #[cfg(feature = "ndarray")]
        DeviceSpec::Cpu => Ok(task.run::<Autodiff<NdArray>>(
            specs
                .iter()
                .map(|_| burn_ndarray::NdArrayDevice::Cpu)
                .collect(),
        )),
        #[cfg(feature = "flex")]
        DeviceSpec::Flex => {
            Ok(task.run::<Autodiff<Flex>>(specs.iter().map(|_| burn_flex::FlexDevice).collect()))
        }
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(_) => on_cuda(first, || {
            task.run::<Autodiff<Cuda>>(
                specs
                    .iter()
                    .map(|s| match s {
                        DeviceSpec::Cuda(n) => burn_cuda::CudaDevice::new(*n),
                        _ => unreachable!("checked above: every spec is a CUDA device"),
                    })
                    .collect(),
            )
        }),
        #[allow(unreachable_patterns)]
        _ => unreachable!("ensure_compiled rejects backends that are not compiled in"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_lists_share_a_backend() {
        struct Count;
        impl DevicesTask for Count {
            type Output = usize;
            fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>) -> usize {
                devices.len()
            }
        }
        assert_eq!(dispatch_devices(&[DeviceSpec::Cpu; 3], Count), Ok(3));
        assert_eq!(dispatch_devices(&[], Count), Err(BackendError::NoDevices));
        let e = dispatch_devices(&[DeviceSpec::Cpu, DeviceSpec::Cuda(0)], Count).unwrap_err();
        assert_eq!(e, BackendError::MixedDevices("cpu,cuda:0".into()));
        assert!(e.to_string().contains("same backend"));
    }

    #[test]
    fn parses_device_strings() {
        assert_eq!(DeviceSpec::parse_name("cpu"), Ok(DeviceSpec::Cpu));
        assert_eq!(DeviceSpec::parse_name(" CUDA:3 "), Ok(DeviceSpec::Cuda(3)));
        assert_eq!(DeviceSpec::parse_name("cuda"), Ok(DeviceSpec::Cuda(0)));
        assert!(matches!(
            DeviceSpec::parse_name("tpu"),
            Err(BackendError::UnknownDevice(_))
        ));
        assert!(matches!(
            DeviceSpec::parse_name("cuda:x"),
            Err(BackendError::UnknownDevice(_))
        ));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn missing_backend_names_the_feature() {
        let err = DeviceSpec::parse("cuda:0").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("--features cuda"), "{msg}");
    }

    #[cfg(feature = "ndarray")]
    #[test]
    fn half_precision_on_a_cpu_is_refused_by_name() {
        struct Nothing;
        impl BackendTask for Nothing {
            type Output = ();
            fn run<B: AutodiffBackend>(self, _: B::Device) {}
        }
        assert_eq!("BF16".parse::<Precision>(), Ok(Precision::Bf16));
        assert!(matches!(
            "f64".parse::<Precision>(),
            Err(BackendError::UnknownPrecision(_))
        ));
        assert_eq!(
            dispatch_precision(DeviceSpec::Cpu, Precision::F32, Nothing),
            Ok(())
        );
        let e = dispatch_precision(DeviceSpec::Cpu, Precision::Bf16, Nothing).unwrap_err();
        assert!(e.to_string().contains("bf16 needs a CUDA device"), "{e}");
    }

    #[cfg(feature = "ndarray")]
    #[test]
    fn dispatch_runs_on_cpu() {
        struct Sum;
        impl BackendTask for Sum {
            type Output = f32;
            fn run<B: AutodiffBackend>(self, device: B::Device) -> f32 {
                let t = burn::tensor::Tensor::<B::InnerBackend, 1>::from_floats(
                    [1.0, 2.0, 3.5],
                    &device,
                );
                burn::tensor::ElementConversion::elem::<f32>(t.sum().into_scalar())
            }
        }
        assert_eq!(dispatch(DeviceSpec::Cpu, Sum).unwrap(), 6.5);
    }
}
