//! The SD VAE against diffusers (`tests/fixtures/make_vae_fixtures.py`: a tiny random
//! `AutoencoderKL` with 3 levels, channel changes, mid attention and random GroupNorm affines;
//! references computed by diffusers in float64), in both attention namings and both file
//! formats, and its errors on bad folders and inputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Tensor, TensorData};
use burn_ndarray::NdArray;
use nag_models::checkpoint::{load_state_dict, save_safetensors, LoadOptions};
use nag_models::npy::read_npy;
use nag_models::vae::{save_diffusers_folder, VaeSource, DEFAULT_SCALING_FACTOR};
use nag_models::{CheckpointError, StateDict, Vae, VaeConfig, VaeError};

mod common;

type B = NdArray<f32>;

fn fixture(name: &str) -> PathBuf {
    common::fixture("vae").join(name)
}

fn scratch(test: &str) -> PathBuf {
    common::scratch("vae", test)
}

fn tensor(name: &str) -> Tensor<B, 4> {
    let a = read_npy(&fixture(name)).unwrap_or_else(|e| panic!("{e}"));
    let shape: [usize; 4] = a.shape.clone().try_into().unwrap();
    Tensor::from_data(
        TensorData::new(a.into_f32().unwrap(), shape),
        &Default::default(),
    )
}

/// max |a − b| / max |b|.
fn rel_err(got: Tensor<B, 4>, want: Tensor<B, 4>) -> f64 {
    assert_eq!(got.dims(), want.dims());
    let g: Vec<f32> = got.into_data().to_vec().unwrap();
    let w: Vec<f32> = want.into_data().to_vec().unwrap();
    let diff = g
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs() as f64)
        .fold(0.0, f64::max);
    diff / w.iter().map(|v| v.abs() as f64).fold(0.0, f64::max)
}

fn load(folder: &str) -> (Vae<B>, VaeSource) {
    Vae::<B>::load(&fixture(folder), &Default::default()).unwrap_or_else(|e| panic!("{e}"))
}

fn check_against_diffusers(vae: &Vae<B>, folder: &str) {
    let posterior = vae.encode(tensor("x.npy")).unwrap();
    for (what, got, want) in [
        ("mean", posterior.mean.clone(), "mean.npy"),
        ("std", posterior.std(), "std.npy"),
        (
            "decode",
            vae.decode(tensor("z.npy")).unwrap(),
            "decoded.npy",
        ),
        (
            "decode(encode mean)",
            vae.decode(posterior.mean.clone()).unwrap(),
            "roundtrip.npy",
        ),
    ] {
        let err = rel_err(got, tensor(want));
        assert!(err <= 1e-5, "{folder} {what}: relative error {err:.2e}");
    }
}

#[test]
fn current_names_safetensors_match_diffusers() {
    let (vae, source) = load("new");
    assert!(!source.old_attention_names);
    assert!(source
        .weights
        .ends_with("diffusion_pytorch_model.safetensors"));
    assert_eq!(source.config.scaling_factor, 0.5);
    assert_eq!(source.config.block_out_channels, vec![8, 16, 16]);
    assert_eq!(vae.downscale(), 4);
    check_against_diffusers(&vae, "new");
}

#[test]
fn old_names_torch_bin_match_diffusers() {
    let (vae, source) = load("old");
    assert!(source.old_attention_names);
    assert!(source.weights.ends_with("diffusion_pytorch_model.bin"));
    // The real sd-vae-ft-ema config has no scaling_factor: diffusers' default applies.
    assert_eq!(source.config.scaling_factor, DEFAULT_SCALING_FACTOR);
    check_against_diffusers(&vae, "old");
}

#[test]
fn sample_is_mean_plus_std_times_eps() {
    let (vae, _) = load("new");
    let posterior = vae.encode(tensor("x.npy")).unwrap();
    let eps = Tensor::<B, 4>::ones(posterior.mean.dims(), &Default::default()) * 0.5;
    let want = posterior.mean.clone() + tensor("std.npy") * 0.5;
    assert!(rel_err(posterior.sample(eps), want) <= 1e-5);
}

fn new_state_dict() -> StateDict {
    load_state_dict(
        &fixture("new/diffusion_pytorch_model.safetensors"),
        &LoadOptions::default(),
    )
    .unwrap()
    .0
}

/// Writes `sd` with the fixture's config into a fresh folder and loads it.
fn load_modified(test: &str, sd: &StateDict) -> Result<(Vae<B>, VaeSource), VaeError> {
    let dir = scratch(test);
    std::fs::copy(fixture("new/config.json"), dir.join("config.json")).unwrap();
    save_safetensors(
        sd,
        &dir.join("diffusion_pytorch_model.safetensors"),
        &BTreeMap::new(),
    )
    .unwrap();
    Vae::<B>::load(&dir, &Default::default())
}

#[test]
fn missing_extra_and_misshaped_keys_name_the_key_and_file() {
    let key = "decoder.up_blocks.1.resnets.2.conv2.weight";
    let mut sd = new_state_dict();
    sd.tensors.remove(key);
    let err = load_modified("missing", &sd).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            &err,
            VaeError::Weights {
                source: CheckpointError::MissingKey { .. },
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains(key) && msg.contains("diffusion_pytorch_model.safetensors"),
        "{msg}"
    );

    let mut sd = new_state_dict();
    sd.insert("encoder.extra.weight", vec![2], vec![0.0, 1.0]);
    let msg = load_modified("extra", &sd).unwrap_err().to_string();
    assert!(msg.contains("encoder.extra.weight"), "{msg}");

    let mut sd = new_state_dict();
    let t = sd.tensors.get_mut("encoder.conv_in.bias").unwrap();
    t.shape = vec![4, 2];
    let msg = load_modified("shape", &sd).unwrap_err().to_string();
    assert!(
        msg.contains("encoder.conv_in.bias") && msg.contains("[4, 2]"),
        "{msg}"
    );

    // Both namings of one layer in one file.
    let mut sd = new_state_dict();
    let q = sd
        .get("encoder.mid_block.attentions.0.to_q.weight")
        .unwrap()
        .clone();
    sd.insert(
        "encoder.mid_block.attentions.0.query.weight",
        q.shape.clone(),
        q.data.clone(),
    );
    let msg = load_modified("both", &sd).unwrap_err().to_string();
    assert!(msg.contains("query") && msg.contains("to_q"), "{msg}");
}

#[test]
fn bad_folders_and_configs_are_named_errors() {
    let err = Vae::<B>::load(Path::new("/nonexistent/vae"), &Default::default()).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/vae"), "{err}");

    let dir = scratch("no-weights");
    std::fs::copy(fixture("new/config.json"), dir.join("config.json")).unwrap();
    let msg = Vae::<B>::load(&dir, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("diffusion_pytorch_model.safetensors"), "{msg}");

    let p = Path::new("config.json");
    for (json, needle) in [
        (r#"{"_class_name": "UNet2DModel"}"#, "UNet2DModel"),
        (
            r#"{"block_out_channels": [8, 16], "norm_num_groups": 3}"#,
            "norm_num_groups",
        ),
        (
            r#"{"block_out_channels": [8], "down_block_types": ["DownBlock2D"]}"#,
            "DownBlock2D",
        ),
        ("not json", "not a diffusers config.json"),
    ] {
        let msg = VaeConfig::from_diffusers_json(json, p)
            .unwrap_err()
            .to_string();
        assert!(msg.contains(needle), "{json}: {msg}");
    }
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let (vae, _) = load("new");
    let device = Default::default();
    let one_channel = Tensor::<B, 4>::zeros([1, 1, 16, 16], &device);
    assert!(matches!(vae.encode(one_channel), Err(VaeError::Input(_))));
    let odd = Tensor::<B, 4>::zeros([1, 3, 18, 16], &device);
    assert!(matches!(vae.encode(odd), Err(VaeError::Input(_))));
    let wrong_latent = Tensor::<B, 4>::zeros([1, 3, 4, 4], &device);
    let msg = vae.decode(wrong_latent).unwrap_err().to_string();
    assert!(msg.contains("latent_channels"), "{msg}");
}

#[test]
fn random_vae_round_trips_through_a_diffusers_folder() {
    let config = VaeConfig::new(vec![8, 16])
        .with_norm_num_groups(4)
        .with_layers_per_block(1);
    let sd = config.random_state_dict(3);
    assert_eq!(sd, config.random_state_dict(3), "same seed, same weights");
    let dir = scratch("random");
    save_diffusers_folder(&dir, &config, &sd).unwrap();
    let (vae, source) = Vae::<B>::load(&dir, &Default::default()).unwrap();
    assert_eq!(source.config, config);
    let x = Tensor::<B, 4>::zeros([1, 3, 8, 8], &Default::default());
    let z = vae.encode(x).unwrap().mean;
    assert_eq!(z.dims(), [1, 4, 4, 4]);
    assert_eq!(vae.decode(z).unwrap().dims(), [1, 3, 8, 8]);
}
