//! DiT network: presets, parameter counts, masks, guided forward, state dicts.

use burn::module::{AutodiffModule, Module};
use burn::tensor::{Bool, Int, Tensor, TensorData};
use burn_autodiff::Autodiff;
use burn_ndarray::NdArray;
use nag_core::guidance::{Branch, Guidance};
use nag_models::dit::{gelu_tanh, sincos_pos_embed_2d, timestep_embedding};
use nag_models::{CheckpointError, Dit, DitConfig, DitHints, ModelError, StateDict, TimeInput};

type B = NdArray<f32>;
type AD = Autodiff<NdArray<f32>>;

const CLASSES: usize = 10;

/// The tiny preset at 8×8×4 (16 tokens of width 128, 4 blocks).
fn tiny(num_classes: usize) -> DitConfig {
    DitConfig::preset("tiny", 8, 4, num_classes).unwrap()
}

/// Deterministic values in `[-scale, scale]` (xorshift).
fn pseudo(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32 * scale
        })
        .collect()
}

/// Every entry but the position table replaced by non-zero pseudo-random values.
fn randomized(sd: &StateDict) -> StateDict {
    let mut sd = sd.clone();
    for (i, (key, t)) in sd.tensors.iter_mut().enumerate() {
        if key != "pos_embed" {
            t.data = pseudo(i as u64 + 1, t.data.len(), 0.1);
        }
    }
    sd
}

fn random_model(config: &DitConfig) -> Dit<B> {
    let model = config.init::<B>(&Default::default()).unwrap();
    let sd = randomized(&model.to_state_dict());
    let fresh = config.init::<B>(&Default::default()).unwrap();
    fresh.load_state_dict(&sd).unwrap().0
}

/// x: [n, 4, 8, 8], t: DDPM indices, y: labels.
fn inputs(n: usize) -> (Tensor<B, 4>, Tensor<B, 1>, Tensor<B, 1, Int>) {
    let device = Default::default();
    let x = Tensor::from_data(
        TensorData::new(pseudo(99, n * 4 * 64, 1.0), [n, 4, 8, 8]),
        &device,
    );
    let t: Vec<f32> = (0..n).map(|i| 37.0 + 411.0 * i as f32).collect();
    let y: Vec<i64> = (0..n)
        .map(|i| (1 + 2 * i as i64) % CLASSES as i64)
        .collect();
    (
        x,
        Tensor::from_data(TensorData::new(t, [n]), &device),
        Tensor::from_data(TensorData::new(y, [n]), &device),
    )
}

fn mask(values: &[bool]) -> Tensor<B, 1, Bool> {
    Tensor::from_data(
        TensorData::new(values.to_vec(), [values.len()]),
        &Default::default(),
    )
}

fn values<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Sample `i` of a `[n, ...]` output flattened.
fn sample(v: &[f32], n: usize, i: usize) -> &[f32] {
    let per = v.len() / n;
    &v[i * per..(i + 1) * per]
}

fn plain(
    model: &Dit<B>,
    n: usize,
    null_t: Option<&[bool]>,
    null_class: Option<&[bool]>,
) -> Vec<f32> {
    let (x, t, y) = inputs(n);
    values(model.forward(x, t, y, null_t.map(mask), null_class.map(mask)))
}

#[test]
fn presets_follow_the_reference_table() {
    let xl = DitConfig::preset("DiT-XL/2", 32, 4, 1000).unwrap();
    assert_eq!(
        (xl.depth, xl.hidden_size, xl.num_heads, xl.patch_size),
        (28, 1152, 16, 2)
    );
    assert!(xl.learn_sigma);
    assert_eq!(xl.time_input, TimeInput::DdpmIndex);
    assert_eq!(xl.label_table_rows(), 1001);

    let s8 = DitConfig::preset("dit-s/8", 32, 4, 1000).unwrap();
    assert_eq!(
        (s8.depth, s8.hidden_size, s8.num_heads, s8.patch_size),
        (12, 384, 6, 8)
    );
    let b4 = DitConfig::preset("DiT-B/4", 32, 4, 0).unwrap();
    assert_eq!(
        (b4.depth, b4.hidden_size, b4.num_heads, b4.patch_size),
        (12, 768, 12, 4)
    );
    let l2 = DitConfig::preset("DIT-L/2", 32, 4, 0).unwrap();
    assert_eq!((l2.depth, l2.hidden_size, l2.num_heads), (24, 1024, 16));

    let sit = DitConfig::preset("SiT-XL/2", 32, 4, 1000).unwrap();
    assert_eq!(sit.time_input, TimeInput::SitClock);
    assert!(!sit.learn_sigma);
    assert_eq!(sit.hidden_size, 1152);

    let t = DitConfig::preset("Tiny", 8, 4, 0).unwrap();
    assert_eq!(
        (t.depth, t.hidden_size, t.num_heads, t.patch_size),
        (4, 128, 4, 2)
    );
    let s = DitConfig::preset("small", 16, 3, 10).unwrap();
    assert_eq!(
        (s.depth, s.hidden_size, s.num_heads, s.patch_size),
        (6, 256, 4, 2)
    );
    assert_eq!(
        DitConfig::preset("SiT-tiny", 8, 4, 0).unwrap().time_input,
        TimeInput::SitClock
    );
    let t4 = DitConfig::preset("tiny/4", 16, 3, 10).unwrap();
    assert_eq!((t4.depth, t4.hidden_size, t4.patch_size), (4, 128, 4));
    assert_eq!(
        DitConfig::preset("SiT-small/1", 8, 4, 0)
            .unwrap()
            .patch_size,
        1
    );

    for bad in [
        "DiT-M/2", "DiT-XL/3", "XL/2", "huge", "", "tiny/3", "tiny/", "small/x",
    ] {
        match DitConfig::preset(bad, 32, 4, 1000) {
            Err(e @ ModelError::UnknownPreset { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("DiT-XL/2") && msg.contains("tiny"), "{msg}");
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
    // geometry the network cannot have
    assert!(matches!(
        DitConfig::preset("DiT-S/8", 12, 4, 0),
        Err(ModelError::InvalidConfig(_))
    ));
}

#[test]
fn parameter_counts_match_the_reference() {
    // DiT-XL/2 at 256 px, analytically (no 675M-float allocation).
    let xl = DitConfig::preset("DiT-XL/2", 32, 4, 1000).unwrap();
    assert_eq!(xl.param_count(), 675_129_632 + 1152);
    assert_eq!(
        xl.clone().with_null_timestep(false).param_count(),
        675_129_632
    );

    let s2 = DitConfig::preset("DiT-S/2", 32, 4, 1000).unwrap();
    assert_eq!(s2.param_count(), 32_963_360 + 384);
    let model = s2.init::<B>(&Default::default()).unwrap();
    assert_eq!(model.num_params(), 32_963_360 + 384);

    for config in [
        tiny(CLASSES),
        tiny(0).with_learn_sigma(false),
        tiny(CLASSES)
            .with_class_dropout_prob(0.0)
            .with_null_timestep(false),
    ] {
        let model = config.init::<B>(&Default::default()).unwrap();
        assert_eq!(model.num_params(), config.param_count(), "{config:?}");
        assert_eq!(model.to_state_dict().num_params(), config.param_count());
    }
}

#[test]
fn fresh_model_outputs_exact_zeros() {
    let model = tiny(CLASSES).init::<B>(&Default::default()).unwrap();
    let (x, t, y) = inputs(2);
    let out = model
        .try_forward(x, t, y, Some(mask(&[true, false])), None)
        .unwrap();
    assert_eq!(out.dims(), [2, 8, 8, 8]);
    assert!(values(out).iter().all(|&v| v == 0.0));
}

#[test]
fn null_t_mask_substitutes_the_null_vector_per_sample() {
    let model = random_model(&tiny(CLASSES));
    let sd = model.to_state_dict();
    // A twin whose timestep MLP outputs the null vector for every t.
    let mut twin_sd = sd.clone();
    let null = sd.get("t_embedder.null").unwrap().data.clone();
    let w = twin_sd.tensors.get_mut("t_embedder.mlp.2.weight").unwrap();
    w.data.iter_mut().for_each(|v| *v = 0.0);
    twin_sd
        .tensors
        .get_mut("t_embedder.mlp.2.bias")
        .unwrap()
        .data = null;
    let twin = tiny(CLASSES)
        .init::<B>(&Default::default())
        .unwrap()
        .load_state_dict(&twin_sd)
        .unwrap()
        .0;

    let unmasked = plain(&model, 2, None, None);
    let all = plain(&model, 2, Some(&[true, true]), None);
    let reference = plain(&twin, 2, None, None);
    assert!(max_diff(&all, &reference) < 1e-5);
    assert!(
        max_diff(&all, &unmasked) > 1e-3,
        "the mask must change the output"
    );

    let first = plain(&model, 2, Some(&[true, false]), None);
    assert!(max_diff(sample(&first, 2, 0), sample(&reference, 2, 0)) < 1e-5);
    assert!(max_diff(sample(&first, 2, 1), sample(&unmasked, 2, 1)) < 1e-5);
    assert!(max_diff(sample(&first, 2, 0), sample(&unmasked, 2, 0)) > 1e-3);
}

#[test]
fn null_class_mask_substitutes_the_null_row_per_sample() {
    let model = random_model(&tiny(CLASSES));
    let sd = model.to_state_dict();
    // A twin whose rows for the labels used (1 and 3) hold the null row.
    let mut twin_sd = sd.clone();
    let table = twin_sd
        .tensors
        .get_mut("y_embedder.embedding_table.weight")
        .unwrap();
    assert_eq!(table.shape, vec![CLASSES + 1, 128]);
    let null_row = table.data[CLASSES * 128..].to_vec();
    for label in [1, 3] {
        table.data[label * 128..(label + 1) * 128].copy_from_slice(&null_row);
    }
    let twin = tiny(CLASSES)
        .init::<B>(&Default::default())
        .unwrap()
        .load_state_dict(&twin_sd)
        .unwrap()
        .0;

    let unmasked = plain(&model, 2, None, None);
    let reference = plain(&twin, 2, None, None);
    let all = plain(&model, 2, None, Some(&[true, true]));
    assert!(max_diff(&all, &reference) < 1e-5);
    assert!(max_diff(&all, &unmasked) > 1e-3);

    let second = plain(&model, 2, None, Some(&[false, true]));
    assert!(max_diff(sample(&second, 2, 0), sample(&unmasked, 2, 0)) < 1e-5);
    assert!(max_diff(sample(&second, 2, 1), sample(&reference, 2, 1)) < 1e-5);
}

#[test]
fn guided_forward_matches_manual_combinations() {
    let model = random_model(&tiny(CLASSES));
    let n = 2;
    let c = plain(&model, n, None, None);
    let u = plain(&model, n, None, Some(&[true, true]));
    let nt = plain(&model, n, Some(&[true, true]), None);
    let guided = |g: Guidance| {
        let (x, t, y) = inputs(n);
        values(model.forward_guided(x, t, y, &g.plan(0.5)).unwrap())
    };
    // per element, channel = (e / 64) % 8; channels 4..8 are the variance channels
    let channel = |e: usize| (e / 64) % 8;

    let none = guided(Guidance::none());
    assert!(max_diff(&none, &c) < 1e-5);

    let (s, w) = (1.5f32, 2.0f32);
    let nag = guided(Guidance::nag(w as f64));
    let both = guided(Guidance::cfg_nag(s as f64, w as f64));
    let mut three = Guidance::nag(w as f64);
    three.guided_channels = Some(3);
    let three = guided(three);
    for e in 0..c.len() {
        let ch = channel(e);
        let expect_nag = if ch < 4 {
            (w + 1.0) * c[e] - w * nt[e]
        } else {
            c[e]
        };
        assert!((nag[e] - expect_nag).abs() < 1e-4, "nag {e}");
        let expect_both = if ch < 4 {
            u[e] + s * (c[e] - u[e]) + w * (c[e] - nt[e])
        } else {
            c[e]
        };
        assert!((both[e] - expect_both).abs() < 1e-4, "cfg+nag {e}");
        let expect_three = if ch < 3 {
            (w + 1.0) * c[e] - w * nt[e]
        } else {
            c[e]
        };
        assert!((three[e] - expect_three).abs() < 1e-4, "3-channel {e}");
    }
    assert!(max_diff(&nag, &c) > 1e-3);
}

#[test]
fn guided_forward_without_learned_sigma_guides_every_channel() {
    let config = tiny(0)
        .with_learn_sigma(false)
        .with_time_input(TimeInput::SitClock);
    let model = random_model(&config);
    let device = Default::default();
    let x = Tensor::<B, 4>::from_data(
        TensorData::new(pseudo(5, 4 * 64, 1.0), [1, 4, 8, 8]),
        &device,
    );
    let t = Tensor::<B, 1>::from_floats([0.3], &device);
    let y = Tensor::<B, 1, Int>::from_ints([0], &device);
    let c = values(model.forward(x.clone(), t.clone(), y.clone(), None, None));
    let nt = values(model.forward(x.clone(), t.clone(), y.clone(), Some(mask(&[true])), None));
    let out = model
        .forward_guided(x, t, y, &Guidance::nag(3.0).plan(0.7))
        .unwrap();
    assert_eq!(out.dims(), [1, 4, 8, 8]);
    let out = values(out);
    for e in 0..out.len() {
        assert!((out[e] - (4.0 * c[e] - 3.0 * nt[e])).abs() < 1e-4);
    }
}

#[test]
fn guidance_the_model_cannot_serve_is_an_error() {
    let device = Default::default();
    let (x, t, y) = inputs(1);
    let unconditional = tiny(0).init::<B>(&device).unwrap();
    let err = unconditional
        .forward_guided(
            x.clone(),
            t.clone(),
            y.clone(),
            &Guidance::cfg(4.0).plan(0.5),
        )
        .unwrap_err();
    assert!(matches!(err, ModelError::Unsupported(_)));
    assert!(err.to_string().contains("cfg_scale = 1"), "{err}");
    // NAG alone is fine on an unconditional model
    unconditional
        .forward_guided(
            x.clone(),
            t.clone(),
            y.clone(),
            &Guidance::nag(2.0).plan(0.5),
        )
        .unwrap();

    let no_null_t = tiny(CLASSES)
        .with_null_timestep(false)
        .init::<B>(&device)
        .unwrap();
    let err = no_null_t
        .forward_guided(
            x.clone(),
            t.clone(),
            y.clone(),
            &Guidance::nag(2.0).plan(0.5),
        )
        .unwrap_err();
    assert!(err.to_string().contains("null_timestep"), "{err}");
    no_null_t
        .forward_guided(
            x.clone(),
            t.clone(),
            y.clone(),
            &Guidance::cfg(2.0).plan(0.5),
        )
        .unwrap();

    let no_null_row = tiny(CLASSES)
        .with_class_dropout_prob(0.0)
        .init::<B>(&device)
        .unwrap();
    assert!(no_null_row
        .forward_guided(x, t, y, &Guidance::cfg(2.0).plan(0.5))
        .is_err());
}

#[test]
fn try_forward_rejects_bad_inputs() {
    let device = Default::default();
    let model = tiny(CLASSES).init::<B>(&device).unwrap();
    let (x, t, y) = inputs(2);
    let wrong_size = Tensor::<B, 4>::zeros([2, 4, 16, 16], &device);
    assert!(matches!(
        model.try_forward(wrong_size, t.clone(), y.clone(), None, None),
        Err(ModelError::Shape(_))
    ));
    let short_t = Tensor::<B, 1>::zeros([1], &device);
    assert!(matches!(
        model.try_forward(x.clone(), short_t, y.clone(), None, None),
        Err(ModelError::Shape(_))
    ));
    let bad_labels = Tensor::<B, 1, Int>::from_ints([3, CLASSES as i32 + 1], &device);
    let err = model
        .try_forward(x.clone(), t.clone(), bad_labels, None, None)
        .unwrap_err();
    assert!(matches!(err, ModelError::InvalidInput(_)), "{err}");
    // y = num_classes is the null class (DiT feeds it to CFG's unconditional half): the same
    // output as the null-class mask.
    let null_label = Tensor::<B, 1, Int>::from_ints([3, CLASSES as i32], &device);
    let by_label = model
        .try_forward(x.clone(), t.clone(), null_label, None, None)
        .unwrap();
    let by_mask = model
        .try_forward(
            x.clone(),
            t.clone(),
            Tensor::<B, 1, Int>::from_ints([3, 0], &device),
            None,
            Some(mask(&[false, true])),
        )
        .unwrap();
    assert_eq!(values(by_label), values(by_mask));
    let no_null_class = tiny(CLASSES)
        .with_class_dropout_prob(0.0)
        .init::<B>(&device)
        .unwrap();
    let msg = no_null_class
        .try_forward(
            x.clone(),
            t.clone(),
            Tensor::<B, 1, Int>::from_ints([0, CLASSES as i32], &device),
            None,
            None,
        )
        .unwrap_err()
        .to_string();
    assert!(msg.contains("no null class"), "{msg}");
    let negative = Tensor::<B, 1, Int>::from_ints([-1, 0], &device);
    assert!(model
        .try_forward(x.clone(), t.clone(), negative, None, None)
        .is_err());
    assert!(matches!(
        model.try_forward(x.clone(), t.clone(), y.clone(), Some(mask(&[true])), None),
        Err(ModelError::Shape(_))
    ));
    let no_null_t = tiny(CLASSES)
        .with_null_timestep(false)
        .init::<B>(&device)
        .unwrap();
    assert!(matches!(
        no_null_t.try_forward(
            x.clone(),
            t.clone(),
            y.clone(),
            Some(mask(&[true, false])),
            None
        ),
        Err(ModelError::Unsupported(_))
    ));
    let unconditional = tiny(0).init::<B>(&device).unwrap();
    // labels (and the class mask) are ignored by an unconditional model
    let any = Tensor::<B, 1, Int>::from_ints([12345, -7], &device);
    unconditional
        .try_forward(x, t, any, None, Some(mask(&[true, true])))
        .unwrap();
}

#[test]
fn unpatchify_orders_features_row_col_channel() {
    // With zero weights the final layer outputs its bias for every token:
    // out[c, i·p + r, j·p + q] = bias[(r·p + q)·C_out + c].
    let config = tiny(CLASSES);
    let model = config.init::<B>(&Default::default()).unwrap();
    let mut sd = model.to_state_dict();
    let bias = sd.tensors.get_mut("final_layer.linear.bias").unwrap();
    assert_eq!(bias.shape, vec![2 * 2 * 8]);
    bias.data = (0..32).map(|f| f as f32).collect();
    let model = config
        .init::<B>(&Default::default())
        .unwrap()
        .load_state_dict(&sd)
        .unwrap()
        .0;
    let out = plain(&model, 1, None, None);
    for c in 0..8 {
        for row in 0..8 {
            for col in 0..8 {
                let (r, q) = (row % 2, col % 2);
                let expect = ((r * 2 + q) * 8 + c) as f32;
                assert_eq!(
                    out[(c * 8 + row) * 8 + col],
                    expect,
                    "c{c} row{row} col{col}"
                );
            }
        }
    }
}

#[test]
fn fixed_embeddings_follow_the_reference_formulas() {
    // position table: token (row, col) → [sin(col·ω) | cos(col·ω) | sin(row·ω) | cos(row·ω)]
    let d = 16;
    let table = sincos_pos_embed_2d(d, 3);
    assert_eq!(table.len(), 9 * d);
    let (row, col) = (2usize, 1usize);
    let tok = &table[(row * 3 + col) * d..(row * 3 + col + 1) * d];
    for k in 0..4 {
        let w = 1.0 / 10000f64.powf(k as f64 / 4.0);
        assert!((tok[k] as f64 - (col as f64 * w).sin()).abs() < 1e-6);
        assert!((tok[4 + k] as f64 - (col as f64 * w).cos()).abs() < 1e-6);
        assert!((tok[8 + k] as f64 - (row as f64 * w).sin()).abs() < 1e-6);
        assert!((tok[12 + k] as f64 - (row as f64 * w).cos()).abs() < 1e-6);
    }
    // timestep features: cos first
    let device = Default::default();
    let emb = values(timestep_embedding(
        Tensor::<B, 1>::from_floats([0.0, 10.0], &device),
        256,
    ));
    assert!(emb[..128].iter().all(|&v| v == 1.0));
    assert!(emb[128..256].iter().all(|&v| v == 0.0));
    let f1 = (-(10000f64.ln()) / 128.0).exp();
    assert!((emb[256 + 1] as f64 - (10.0 * f1).cos()).abs() < 1e-5);
    assert!((emb[256 + 128 + 1] as f64 - (10.0 * f1).sin()).abs() < 1e-5);
    // the model's table is the formula's
    let model = tiny(0).init::<B>(&device).unwrap();
    let sd = model.to_state_dict();
    assert_eq!(
        sd.get("pos_embed").unwrap().data,
        sincos_pos_embed_2d(128, 4)
    );
}

#[test]
fn state_dict_round_trip_preserves_the_output() {
    let config = tiny(CLASSES);
    let model = random_model(&config);
    let sd = model.to_state_dict();
    let expected: Vec<(String, Vec<usize>)> = config.state_dict_shapes();
    let got: Vec<(String, Vec<usize>)> = sd
        .tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.shape.clone()))
        .collect();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    assert_eq!(got, expected_sorted);
    for (key, shape) in [
        ("pos_embed", vec![1, 16, 128]),
        ("x_embedder.proj.weight", vec![128, 4, 2, 2]),
        ("t_embedder.mlp.0.weight", vec![128, 256]),
        ("t_embedder.null", vec![128]),
        ("y_embedder.embedding_table.weight", vec![11, 128]),
        ("blocks.3.attn.qkv.weight", vec![384, 128]),
        ("blocks.0.mlp.fc1.weight", vec![512, 128]),
        ("blocks.0.mlp.fc2.weight", vec![128, 512]),
        ("blocks.2.adaLN_modulation.1.bias", vec![768]),
        ("final_layer.linear.weight", vec![32, 128]),
        ("final_layer.adaLN_modulation.1.weight", vec![256, 128]),
    ] {
        assert_eq!(sd.get(key).map(|t| t.shape.clone()), Some(shape), "{key}");
    }

    let (loaded, report) = config
        .init::<B>(&Default::default())
        .unwrap()
        .load_state_dict(&sd)
        .unwrap();
    assert!(!report.null_timestep_initialised);
    assert_eq!(report.loaded, sd.len());
    assert_eq!(loaded.to_state_dict(), sd);
    let a = plain(&model, 2, Some(&[false, true]), None);
    let b = plain(&loaded, 2, Some(&[false, true]), None);
    assert_eq!(a, b);

    // PyTorch layout: Linear weight [out, in], i.e. burn's weight transposed
    let w = sd.get("blocks.0.attn.proj.weight").unwrap();
    let burn_w = values(loaded.blocks[0].attn.proj.weight.val());
    assert_eq!(w.data[128 + 5], burn_w[5 * 128 + 1]); // torch [1, 5] = burn [5, 1]
}

#[test]
fn loading_reports_named_errors() {
    let config = tiny(CLASSES);
    let fresh = || config.init::<B>(&Default::default()).unwrap();
    let sd = fresh().to_state_dict();

    let mut missing = sd.clone();
    missing.tensors.remove("blocks.2.mlp.fc2.bias");
    match fresh().load_state_dict(&missing) {
        Err(CheckpointError::MissingKey { key, expected_kind }) => {
            assert_eq!(key, "blocks.2.mlp.fc2.bias");
            assert_eq!(expected_kind, "DiT");
        }
        other => panic!("{:?}", other.map(|r| r.1)),
    }

    let mut wrong = sd.clone();
    wrong.insert(
        "final_layer.linear.weight",
        vec![16, 128],
        vec![0.0; 16 * 128],
    );
    match fresh().load_state_dict(&wrong) {
        Err(CheckpointError::ShapeMismatch {
            key,
            expected,
            found,
        }) => {
            assert_eq!(key, "final_layer.linear.weight");
            assert_eq!(expected, vec![32, 128]);
            assert_eq!(found, vec![16, 128]);
        }
        other => panic!("{:?}", other.map(|r| r.1)),
    }

    let mut extra = sd.clone();
    extra.insert("blocks.9.attn.qkv.weight", vec![1], vec![0.0]);
    match fresh().load_state_dict(&extra) {
        Err(CheckpointError::UnexpectedKeys { keys }) => {
            assert_eq!(keys, vec!["blocks.9.attn.qkv.weight".to_string()])
        }
        other => panic!("{:?}", other.map(|r| r.1)),
    }

    // A plain DiT checkpoint (no null vector) loads; the fresh null vector is kept.
    let mut plain_dit = randomized(&sd);
    plain_dit.tensors.remove("t_embedder.null");
    let model = fresh();
    let before = values(model.t_embedder.null.as_ref().unwrap().val());
    let (model, report) = model.load_state_dict(&plain_dit).unwrap();
    assert!(report.null_timestep_initialised);
    assert_eq!(
        values(model.t_embedder.null.as_ref().unwrap().val()),
        before
    );
    // ... and a model without the vector rejects a checkpoint that has one
    let no_null = config.clone().with_null_timestep(false);
    assert!(matches!(
        no_null
            .init::<B>(&Default::default())
            .unwrap()
            .load_state_dict(&sd),
        Err(CheckpointError::UnexpectedKeys { .. })
    ));
}

/// A state dict with the config's shapes and zero values (cheap for shape-only tests).
fn zeros_like(config: &DitConfig) -> StateDict {
    let mut sd = StateDict::new();
    for (key, shape) in config.state_dict_shapes() {
        let n = shape.iter().product();
        sd.insert(key, shape, vec![0.0; n]);
    }
    sd
}

#[test]
fn config_is_inferred_from_a_state_dict() {
    for config in [
        tiny(CLASSES),
        tiny(0).with_learn_sigma(false),
        DitConfig::preset("small", 16, 3, 7).unwrap(),
        DitConfig::preset("DiT-S/2", 32, 4, 1000).unwrap(),
        DitConfig::preset("DiT-B/8", 32, 4, 1000).unwrap(),
    ] {
        let inferred =
            DitConfig::infer_from_state_dict(&zeros_like(&config), &DitHints::default()).unwrap();
        assert_eq!(inferred, config);
    }
    // from a real model's export
    let model = tiny(CLASSES).init::<B>(&Default::default()).unwrap();
    let (rebuilt, _) = Dit::<B>::from_state_dict(
        &model.to_state_dict(),
        &DitHints::default(),
        &Default::default(),
    )
    .unwrap();
    assert_eq!(rebuilt.config(), &tiny(CLASSES));

    // SiT: same shapes, clock from the hints
    let sit = DitConfig::preset("SiT-S/2", 32, 4, 1000).unwrap();
    let mut sd = zeros_like(&sit);
    sd.tensors.remove("t_embedder.null"); // as in a published SiT checkpoint
    assert_eq!(
        DitConfig::infer_from_state_dict(&sd, &DitHints::sit()).unwrap(),
        sit
    );

    // non-standard width: heads must be given
    let odd = DitConfig::new(8, 2, 4, 64, 2, 2, 0);
    let sd = zeros_like(&odd);
    match DitConfig::infer_from_state_dict(&sd, &DitHints::default()) {
        Err(CheckpointError::ConfigMismatch(msg)) => assert!(msg.contains("hints"), "{msg}"),
        other => panic!("{other:?}"),
    }
    let hints = DitHints {
        num_heads: Some(2),
        ..DitHints::default()
    };
    assert_eq!(DitConfig::infer_from_state_dict(&sd, &hints).unwrap(), odd);

    // inconsistent shapes are named
    let mut bad = zeros_like(&tiny(CLASSES));
    bad.insert(
        "final_layer.linear.weight",
        vec![20, 128],
        vec![0.0; 20 * 128],
    );
    assert!(matches!(
        DitConfig::infer_from_state_dict(&bad, &DitHints::default()),
        Err(CheckpointError::ConfigMismatch(_))
    ));
    let mut no_pos = zeros_like(&tiny(CLASSES));
    no_pos.tensors.remove("pos_embed");
    assert!(matches!(
        DitConfig::infer_from_state_dict(&no_pos, &DitHints::default()),
        Err(CheckpointError::MissingKey { .. })
    ));
}

#[test]
fn gradients_reach_the_null_vector_but_not_the_position_table() {
    // Loaded on the plain backend, then moved to autodiff: loaded weights stay trainable.
    let inner = random_model(&tiny(CLASSES));
    let model: Dit<AD> = Dit::from_inner(inner);
    let device = Default::default();
    let (x, t, y) = inputs(2);
    let x = Tensor::<AD, 4>::from_data(x.into_data(), &device);
    let t = Tensor::<AD, 1>::from_data(t.into_data(), &device);
    let y = Tensor::<AD, 1, Int>::from_data(y.into_data(), &device);
    let null_t = Tensor::<AD, 1, Bool>::from_data(TensorData::new(vec![true, false], [2]), &device);
    let out = model.forward(x, t, y, Some(null_t), None);
    let grads = out.powi_scalar(2).sum().backward();
    assert!(model.pos_embed.grad(&grads).is_none());
    let null_grad = model
        .t_embedder
        .null
        .as_ref()
        .unwrap()
        .grad(&grads)
        .unwrap();
    assert!(values(null_grad).iter().any(|&g| g != 0.0));
    let w_grad = model.blocks[0].attn.qkv.weight.grad(&grads).unwrap();
    assert!(values(w_grad).iter().any(|&g| g != 0.0));
    assert!(model.final_layer.linear.weight.grad(&grads).is_some());
    // `valid()` goes back to the plain backend
    assert_eq!(model.valid().num_params(), tiny(CLASSES).param_count());
}

#[test]
fn masks_are_independent_of_the_branch_order() {
    // forward_guided batches [cond; null_class; null_t]; outputs per branch equal separate calls
    let model = random_model(&tiny(CLASSES));
    let plan = Guidance::cfg_nag(2.0, 1.0).plan(0.5);
    assert_eq!(
        plan.branches,
        vec![Branch::COND, Branch::NULL_CLASS, Branch::NULL_T]
    );
    let (x, t, y) = inputs(1);
    let out = values(model.forward_guided(x, t, y, &plan).unwrap());
    let c = plain(&model, 1, None, None);
    let u = plain(&model, 1, None, Some(&[true]));
    let n = plain(&model, 1, Some(&[true]), None);
    let coefs: Vec<f32> = plan.coefs.iter().map(|&k| k as f32).collect();
    for e in 0..out.len() {
        let expect = if (e / 64) % 8 < 4 {
            coefs[0] * c[e] + coefs[1] * u[e] + coefs[2] * n[e]
        } else {
            c[e]
        };
        assert!((out[e] - expect).abs() < 1e-4);
    }
}

#[test]
fn attention_matches_a_naive_per_head_computation() {
    use burn::nn::LinearConfig;
    use nag_models::dit::Attention;
    let device = Default::default();
    let (l, d, h) = (5usize, 8usize, 2usize);
    let hd = d / h;
    let attn = Attention::<B> {
        qkv: LinearConfig::new(d, 3 * d).init(&device),
        proj: LinearConfig::new(d, d).init(&device),
        num_heads: h,
    };
    let x = Tensor::<B, 3>::from_data(TensorData::new(pseudo(7, l * d, 1.0), [1, l, d]), &device);
    let qkv = values(attn.qkv.forward(x.clone())); // [L, 3D], features [q | k | v]
    let at = |tok: usize, part: usize, head: usize, i: usize| {
        qkv[tok * 3 * d + part * d + head * hd + i]
    };
    let mut mixed = vec![0f32; l * d];
    for head in 0..h {
        for qi in 0..l {
            let scores: Vec<f64> = (0..l)
                .map(|ki| {
                    (0..hd)
                        .map(|i| (at(qi, 0, head, i) * at(ki, 1, head, i)) as f64)
                        .sum::<f64>()
                        / (hd as f64).sqrt()
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
            for i in 0..hd {
                let v: f64 = (0..l)
                    .map(|ki| (scores[ki] - m).exp() / z * at(ki, 2, head, i) as f64)
                    .sum();
                mixed[qi * d + head * hd + i] = v as f32;
            }
        }
    }
    let expect = values(attn.proj.forward(Tensor::<B, 3>::from_data(
        TensorData::new(mixed, [1, l, d]),
        &device,
    )));
    let got = values(attn.forward(x));
    assert!(max_diff(&got, &expect) < 1e-5);
}

#[test]
fn layer_norm_has_no_affine_and_eps_1e6() {
    let device = Default::default();
    let x = Tensor::<B, 3>::from_floats([[[1.0, 2.0, 3.0, 6.0]]], &device);
    let got = values(nag_models::dit::layer_norm(x));
    let mean = 3.0f64;
    let var = (4.0 + 1.0 + 0.0 + 9.0) / 4.0;
    for (g, v) in got.iter().zip([1.0, 2.0, 3.0, 6.0]) {
        assert!((*g as f64 - (v - mean) / (var + 1e-6f64).sqrt()).abs() < 1e-6);
    }
}

/// `gelu_tanh` against PyTorch's tanh formula in f64, value and derivative, including |x| large
/// enough that a naive `x / (1 + e^{−2z})` would overflow to `∞` and give a NaN gradient.
#[test]
fn gelu_tanh_matches_the_tanh_formula_and_stays_finite() {
    const K: f64 = 0.797_884_560_802_865_4; // √(2/π)
    let gelu = |x: f64| 0.5 * x * (1.0 + (K * (x + 0.044715 * x.powi(3))).tanh());
    let dgelu = |x: f64| {
        let z = K * (x + 0.044715 * x.powi(3));
        let t = z.tanh();
        0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * K * (1.0 + 3.0 * 0.044715 * x * x)
    };
    let mut xs: Vec<f32> = (-400..=400).map(|i| i as f32 * 0.02).collect();
    xs.extend([-1e4, -200.0, -30.0, -12.0, 12.0, 30.0, 200.0, 1e4]);
    let device = Default::default();
    let x = Tensor::<AD, 1>::from_floats(xs.as_slice(), &device).require_grad();
    let y = gelu_tanh(x.clone());
    let grads = y.clone().sum().backward();
    let dy = values(x.grad(&grads).unwrap());
    let y = values(y.inner());
    for ((&xi, &yi), &gi) in xs.iter().zip(&y).zip(&dy) {
        let (want, dwant) = (gelu(xi as f64), dgelu(xi as f64));
        assert!(
            yi.is_finite() && gi.is_finite(),
            "x = {xi}: y = {yi}, dy = {gi}"
        );
        assert!(
            (yi as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()),
            "x = {xi}: gelu {yi} vs {want}"
        );
        assert!(
            (gi as f64 - dwant).abs() <= 1e-5 * (1.0 + dwant.abs()),
            "x = {xi}: gelu' {gi} vs {dwant}"
        );
    }
}
