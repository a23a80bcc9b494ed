//! The paper's ImageNet pipeline end to end, in miniature: an image folder → latents through a
//! tiny random SD-style VAE → a few NAG training steps on the latent store → a sample set with
//! CFG+NAG decoded by the VAE into the ADM `.npz` → the ADM evaluation against a reference
//! batch of the real crops (random Inception weights: the numbers are meaningless, the plumbing
//! is what is tested).

use std::path::Path;

use burn_autodiff::Autodiff;
use burn_ndarray::NdArray;
use nag_core::guidance::Guidance;
use nag_models::vae::{save_diffusers_folder, Vae, VaeConfig};
use nag_train::data::folder::{center_crop_arr, decode_image};
use nag_train::data::OnError;
use nag_train::generate::{load_model, SampleConfig, Sampled, SamplerKind};
use nag_train::image::RgbImage;
use nag_train::latent_extract::{extract_latents, ExtractConfig};
use nag_train::metrics::adm::{evaluate, AdmOptions};
use nag_train::metrics::inception::{random_state_dict, InceptionV3};
use nag_train::sample_set::{sample_set, write_images_npz, LabelMode, SampleSetSpec};
use nag_train::sampling::FixedVariance;
use nag_train::train::{train, TrainConfig};
use nag_train::vae_codec::to_u8_nhwc;

type B = NdArray<f32>;

/// Two classes of three 20×24 images (a disc or a bar on a gradient).
fn write_image_folder(root: &Path) {
    for (class, name) in ["bar", "disc"].iter().enumerate() {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for k in 0..3usize {
            let (w, h) = (24, 20);
            let mut img = RgbImage::new(w, h, [0, 0, 0]);
            for y in 0..h {
                for x in 0..w {
                    let inside = if class == 0 {
                        (8..16).contains(&x)
                    } else {
                        (x as i64 - 12).pow(2) + (y as i64 - 10).pow(2) < 36
                    };
                    let c = if inside {
                        [220, 40 + 60 * k as u8, 40]
                    } else {
                        [(x * 10) as u8, (y * 12) as u8, 90]
                    };
                    img.put(x as i64, y as i64, c);
                }
            }
            img.save_png(&dir.join(format!("{k}.png"))).unwrap();
        }
    }
}

#[test]
fn image_folder_to_latents_to_training_to_npz_to_adm_evaluation() {
    let base = std::env::temp_dir().join(format!("nag-pipeline-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let (images, vae_dir, store) = (base.join("images"), base.join("vae"), base.join("store"));
    write_image_folder(&images);
    let vae_config = VaeConfig::new(vec![8, 16])
        .with_norm_num_groups(4)
        .with_layers_per_block(1);
    save_diffusers_folder(&vae_dir, &vae_config, &vae_config.random_state_dict(1)).unwrap();
    let device = Default::default();

    // 1. Latents: 6 images × (plain, mirrored), 4×8×8 each at --size 16.
    let summary = extract_latents::<B>(
        &ExtractConfig {
            data: images.clone(),
            vae: vae_dir.clone(),
            out: store.clone(),
            size: 16,
            batch: 4,
            shard_size: 4,
            on_error: OnError::Fail,
            threads: Some(1),
        },
        &device,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(summary.manifest.count, 6);
    assert!(summary.manifest.complete);

    // 2. NAG training on the store (noise dropout 0.1, label dropout for CFG).
    let run = base.join("run");
    let cfg = TrainConfig {
        data: store.display().to_string(),
        model: "tiny".into(),
        steps: 3,
        batch: 4,
        checkpoint_every: 3,
        log_every: 1,
        workers: 1,
        noise_dropout: 0.1,
        seed: 3,
        ..TrainConfig::default()
    };
    train::<Autodiff<B>>(&cfg, &run, false, &device, |_| {}).unwrap();
    let model = load_model::<B>(&run.join("ema.safetensors"), &device).unwrap();
    let mc = model.config();
    assert_eq!((mc.in_channels, mc.input_size, mc.num_classes), (4, 8, 2));

    // 3. Sample set: CFG + NAG, decoded by the VAE, in the ADM format.
    let (vae, source) = Vae::<B>::load(&vae_dir, &device).unwrap();
    let sample_cfg = SampleConfig {
        sampler: SamplerKind::Ddpm,
        steps: 3,
        eta: 0.0,
        seed: 0,
        path: "linear".into(),
        clip_x0: false,
        threads: 1,
        variance: FixedVariance::Large,
    };
    let samples = base.join("samples.npz");
    let set = sample_set(
        &Sampled::Network(&model),
        mc.num_classes,
        Some((&vae, source.config.scaling_factor)),
        &sample_cfg,
        &SampleSetSpec {
            n: 6,
            batch: 4,
            labels: LabelMode::Balanced,
            guidance: Guidance::cfg_nag(1.5, 1.0),
            identity: serde_json::json!("pipeline test"),
        },
        &samples,
        &device,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(set.shape, [6, 16, 16, 3]);

    // 4. Reference batch: the real 16-px crops, as bytes.
    let mut crops = Vec::new();
    for class in ["bar", "disc"] {
        for k in 0..3 {
            let img = decode_image(&images.join(class).join(format!("{k}.png"))).unwrap();
            crops.extend(center_crop_arr(&img, 16));
        }
    }
    let reference = base.join("ref.npz");
    write_images_npz(
        &reference,
        [6, 16, 16, 3],
        &to_u8_nhwc(&crops, [6, 3, 16, 16]),
    )
    .unwrap();

    // 5. The ADM evaluation.
    let net = InceptionV3::<B>::from_state_dict(&random_state_dict(5), "random", &device)
        .unwrap()
        .with_batch(6);
    let report = evaluate(
        &net,
        &samples,
        &reference,
        &AdmOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!((report.n_samples, report.n_reference), (6, 6));
    for v in [report.inception_score, report.fid, report.sfid] {
        assert!(v.is_finite(), "{report:?}");
    }
    assert!(
        report.fid > 0.0,
        "samples of a 3-step model differ from the data: {report:?}"
    );
    let _ = std::fs::remove_dir_all(&base);
}
