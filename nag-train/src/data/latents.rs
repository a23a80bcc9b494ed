//! Pre-extracted latents (e.g. VAE latents ×0.18215) with labels, held in memory.
//!
//! Sources:
//! - a `.npy` pair: latents `[N, C, H, W]` (any float dtype) and labels `[N]` (any integer
//!   dtype). The labels file is `DataOptions::labels`, else `<stem>_labels.npy`, else
//!   `labels.npy` in the same folder;
//! - one `.safetensors` file with tensors `latents` (F32/F64/F16/BF16, `[N, C, H, W]`) and
//!   `labels` (any integer type, `[N]`).
//!
//! Everything is read into memory (`N·C·H·W·4` bytes). Labels must be `≥ 0`; the number of
//! classes is `max label + 1`. Flipping is off unless `DataOptions::hflip` asks for it.

use std::path::{Path, PathBuf};

use rand_chacha::ChaCha8Rng;
use safetensors::{Dtype, SafeTensors};

use super::{file_name_lower, maybe_flip, DataError, DataOptions, Dataset, Item};

/// In-memory latents with labels; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct LatentDataset {
    latents: Vec<f32>,
    labels: Vec<i64>,
    shape: [usize; 3],
    num_classes: usize,
    source: String,
    hflip: bool,
}

impl LatentDataset {
    /// Builds from arrays: `latents` `[N, C, H, W]` (`shape`), `labels` `[N]` (≥ 0).
    pub fn from_arrays(
        latents: Vec<f32>,
        shape: [usize; 4],
        labels: Vec<i64>,
        source: &str,
        hflip: bool,
    ) -> Result<Self, DataError> {
        let [n, c, h, w] = shape;
        let bad = |reason: String| DataError::bad(Path::new(source), reason);
        if n == 0 || c * h * w == 0 {
            return Err(bad(format!("latents shape {shape:?} holds no items")));
        }
        if latents.len() != n * c * h * w || labels.len() != n {
            return Err(bad(format!(
                "{} latent values for shape {shape:?} and {} labels (need N = {n})",
                latents.len(),
                labels.len()
            )));
        }
        if let Some(l) = labels.iter().find(|&&l| l < 0) {
            return Err(bad(format!(
                "negative label {l}; labels must be class indices >= 0"
            )));
        }
        if latents.iter().any(|v| !v.is_finite()) {
            return Err(bad("latents contain NaN or infinite values".into()));
        }
        let num_classes = labels.iter().copied().max().unwrap_or(0) as usize + 1;
        Ok(Self {
            latents,
            labels,
            shape: [c, h, w],
            num_classes,
            source: source.to_string(),
            hflip,
        })
    }

    /// Reads a `.npy` latents file (with its labels file) or a `.safetensors` file.
    pub fn open(path: &Path, options: &DataOptions) -> Result<Self, DataError> {
        let hflip = options.hflip.unwrap_or(false);
        let name = file_name_lower(path);
        let source = path.display().to_string();
        if name.ends_with(".safetensors") {
            let (latents, shape, labels) = read_safetensors(path)?;
            return Self::from_arrays(latents, shape, labels, &source, hflip);
        }
        if !name.ends_with(".npy") {
            return Err(DataError::bad(
                path,
                "latents must be a .npy file (with a labels .npy) or a .safetensors file",
            ));
        }
        let labels_path = labels_path_for(path, options.labels.as_deref())?;
        let npy_err = |p: &Path, e: nag_models::npy::NpyError| DataError::decode(p, e);
        let lat = nag_models::npy::read_npy(path).map_err(|e| npy_err(path, e))?;
        let shape = four_d(path, &lat.shape)?;
        let latents = lat.into_f32().map_err(|e| npy_err(path, e))?;
        let lab = nag_models::npy::read_npy(&labels_path).map_err(|e| npy_err(&labels_path, e))?;
        if lab.shape.iter().filter(|&&d| d != 1).count() > 1 || lab.shape.is_empty() {
            return Err(DataError::bad(
                &labels_path,
                format!("labels must have shape [N], found {:?}", lab.shape),
            ));
        }
        let labels = lab.into_i64().map_err(|e| npy_err(&labels_path, e))?;
        Self::from_arrays(latents, shape, labels, &source, hflip)
    }

    /// The labels, in index order.
    pub fn labels(&self) -> &[i64] {
        &self.labels
    }
}

fn four_d(path: &Path, shape: &[usize]) -> Result<[usize; 4], DataError> {
    <[usize; 4]>::try_from(shape).map_err(|_| {
        DataError::bad(
            path,
            format!("latents must have shape [N, C, H, W], found {shape:?}"),
        )
    })
}

/// The labels file for a `.npy` latents file.
fn labels_path_for(latents: &Path, given: Option<&Path>) -> Result<PathBuf, DataError> {
    if let Some(p) = given {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(DataError::bad(p, "labels file not found"))
        };
    }
    let stem = latents.file_stem().unwrap_or_default().to_string_lossy();
    let candidates = [
        latents.with_file_name(format!("{stem}_labels.npy")),
        latents.with_file_name("labels.npy"),
    ];
    candidates
        .iter()
        .find(|p| p.is_file() && p.as_path() != latents)
        .cloned()
        .ok_or_else(|| {
            DataError::bad(
                latents,
                format!(
                    "no labels file: put the labels ([N] integers) in {} or {}, or pass the \
                     labels path explicitly",
                    candidates[0].display(),
                    candidates[1].display()
                ),
            )
        })
}

/// Latent values, their `[N, C, H, W]` shape, and labels.
type LatentArrays = (Vec<f32>, [usize; 4], Vec<i64>);

/// Reads `latents` and `labels` from a safetensors file.
fn read_safetensors(path: &Path) -> Result<LatentArrays, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| DataError::decode(path, e))?;
    let get = |name: &str| {
        st.tensor(name).map_err(|_| {
            let mut names: Vec<&String> = st.names();
            names.sort();
            DataError::bad(
                path,
                format!("no tensor '{name}' (found {names:?}); save 'latents' [N,C,H,W] and 'labels' [N]"),
            )
        })
    };
    let lat = get("latents")?;
    let shape = four_d(path, lat.shape())?;
    let d = lat.data();
    let latents: Vec<f32> = match lat.dtype() {
        Dtype::F32 => d
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        Dtype::F64 => d
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32)
            .collect(),
        Dtype::F16 => d
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => d
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => {
            return Err(DataError::bad(
                path,
                format!("latents dtype {other:?}; expected a float type"),
            ))
        }
    };
    let lab = get("labels")?;
    if lab.shape().iter().filter(|&&d| d != 1).count() > 1 || lab.shape().is_empty() {
        return Err(DataError::bad(
            path,
            format!("labels must have shape [N], found {:?}", lab.shape()),
        ));
    }
    let d = lab.data();
    let labels: Vec<i64> = match lab.dtype() {
        Dtype::U8 => d.iter().map(|&v| v as i64).collect(),
        Dtype::I8 => d.iter().map(|&v| v as i8 as i64).collect(),
        Dtype::I16 => d
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]) as i64)
            .collect(),
        Dtype::U16 => d
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as i64)
            .collect(),
        Dtype::I32 => d
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as i64)
            .collect(),
        Dtype::U32 => d
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()) as i64)
            .collect(),
        Dtype::I64 | Dtype::U64 => d
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        other => {
            return Err(DataError::bad(
                path,
                format!("labels dtype {other:?}; expected an integer type"),
            ))
        }
    };
    Ok((latents, shape, labels))
}

/// Writes `latents` (`[N, C, H, W]` f32) and `labels` (`[N]` i64) to a `.safetensors` file
/// readable by [`LatentDataset::open`] (atomic: temporary file + rename).
pub fn write_latents_safetensors(
    path: &Path,
    latents: &[f32],
    shape: [usize; 4],
    labels: &[i64],
) -> Result<(), DataError> {
    use safetensors::tensor::TensorView;
    let lat: Vec<u8> = latents.iter().flat_map(|v| v.to_le_bytes()).collect();
    let lab: Vec<u8> = labels.iter().flat_map(|v| v.to_le_bytes()).collect();
    let views = [
        ("latents", TensorView::new(Dtype::F32, shape.to_vec(), &lat)),
        (
            "labels",
            TensorView::new(Dtype::I64, vec![labels.len()], &lab),
        ),
    ];
    let mut tensors = Vec::new();
    for (name, view) in views {
        tensors.push((name, view.map_err(|e| DataError::bad(path, e.to_string()))?));
    }
    let bytes =
        safetensors::serialize(tensors, &None).map_err(|e| DataError::bad(path, e.to_string()))?;
    nag_models::checkpoint::write_atomic(path, |w| std::io::Write::write_all(w, &bytes))
        .map_err(|e| DataError::io(path, e))
}

impl Dataset for LatentDataset {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn item(&self, index: usize, rng: &mut ChaCha8Rng) -> Result<Item, DataError> {
        let n = self.labels.len();
        if index >= n {
            return Err(DataError::Index { index, len: n });
        }
        let d: usize = self.shape.iter().product();
        let mut x = self.latents[index * d..(index + 1) * d].to_vec();
        maybe_flip(&mut x, self.shape, self.hflip, rng);
        Ok(Item {
            x,
            y: self.labels[index],
        })
    }

    fn shape(&self) -> [usize; 3] {
        self.shape
    }

    fn num_classes(&self) -> usize {
        self.num_classes
    }

    fn name(&self) -> String {
        format!("latents {}", self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testutil::TempDir;
    use crate::data::{open_dataset, stream_rng};
    use nag_models::npy::{write_npy, NpyArray, NpyData};

    fn fixture() -> (Vec<f32>, Vec<i64>) {
        let latents = (0..3 * 4 * 2 * 2).map(|i| i as f32 * 0.25 - 3.0).collect();
        (latents, vec![2, 0, 5])
    }

    fn check(ds: &dyn Dataset, latents: &[f32], labels: &[i64]) {
        assert_eq!((ds.len(), ds.shape(), ds.num_classes()), (3, [4, 2, 2], 6));
        for i in 0..3 {
            let item = ds.item(i, &mut stream_rng(0, 0, i as u64)).unwrap();
            assert_eq!(item.x, &latents[i * 16..(i + 1) * 16]);
            assert_eq!(item.y, labels[i]);
        }
    }

    #[test]
    fn npy_pair_round_trip() {
        let dir = TempDir::new("npy");
        let (latents, labels) = fixture();
        let lat = NpyArray::new(vec![3, 4, 2, 2], NpyData::F32(latents.clone())).unwrap();
        write_npy(&dir.join("train.npy"), &lat).unwrap();
        let opts = DataOptions::default();
        let err = open_dataset(dir.join("train.npy").to_str().unwrap(), &opts).unwrap_err();
        assert!(err.to_string().contains("train_labels.npy"), "{err}");
        let lab = NpyArray::new(vec![3], NpyData::I64(labels.clone())).unwrap();
        write_npy(&dir.join("train_labels.npy"), &lab).unwrap();
        let ds = open_dataset(dir.join("train.npy").to_str().unwrap(), &opts).unwrap();
        check(ds.as_ref(), &latents, &labels);
        // A folder with latents.npy + labels.npy is a latents dataset.
        std::fs::rename(dir.join("train.npy"), dir.join("latents.npy")).unwrap();
        std::fs::rename(dir.join("train_labels.npy"), dir.join("labels.npy")).unwrap();
        let ds = open_dataset(dir.0.to_str().unwrap(), &opts).unwrap();
        check(ds.as_ref(), &latents, &labels);
        // Wrong rank and wrong label count are errors naming the file.
        let flat = NpyArray::new(vec![48], NpyData::F32(latents.clone())).unwrap();
        write_npy(&dir.join("flat.npy"), &flat).unwrap();
        let opts = DataOptions {
            labels: Some(dir.join("labels.npy")),
            ..opts
        };
        let err = LatentDataset::open(&dir.join("flat.npy"), &opts)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("flat.npy") && err.contains("[N, C, H, W]"),
            "{err}"
        );
    }

    #[test]
    fn safetensors_round_trip() {
        let dir = TempDir::new("st");
        let (latents, labels) = fixture();
        let path = dir.join("lat.safetensors");
        write_latents_safetensors(&path, &latents, [3, 4, 2, 2], &labels).unwrap();
        let ds = open_dataset(path.to_str().unwrap(), &DataOptions::default()).unwrap();
        check(ds.as_ref(), &latents, &labels);
        assert!(write_latents_safetensors(&path, &latents, [3, 4, 2, 2], &labels[..2]).is_ok());
        let err = LatentDataset::open(&path, &DataOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("2 labels"), "{err}");
        std::fs::write(&path, b"garbage").unwrap();
        assert!(LatentDataset::open(&path, &DataOptions::default()).is_err());
    }

    #[test]
    fn half_precision_latents_read_as_f32() {
        use safetensors::tensor::TensorView;
        let dir = TempDir::new("st16");
        let (latents, labels) = fixture();
        // The fixture's values (multiples of 1/4 in [−3, 9)) are exact in f16 and bf16.
        let lab: Vec<u8> = labels.iter().flat_map(|v| v.to_le_bytes()).collect();
        for (dtype, bytes) in [
            (
                Dtype::F16,
                latents
                    .iter()
                    .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                    .collect::<Vec<u8>>(),
            ),
            (
                Dtype::BF16,
                latents
                    .iter()
                    .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                    .collect(),
            ),
        ] {
            let views = vec![
                (
                    "latents",
                    TensorView::new(dtype, vec![3, 4, 2, 2], &bytes).unwrap(),
                ),
                (
                    "labels",
                    TensorView::new(Dtype::I64, vec![3], &lab).unwrap(),
                ),
            ];
            let path = dir.join(&format!("{dtype:?}.safetensors"));
            std::fs::write(&path, safetensors::serialize(views, &None).unwrap()).unwrap();
            let ds = open_dataset(path.to_str().unwrap(), &DataOptions::default()).unwrap();
            check(ds.as_ref(), &latents, &labels);
        }
    }
}
