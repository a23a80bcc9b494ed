//! The VAE's state-dict key names and PyTorch shapes (current diffusers naming), the older
//! attention names mapped to them, and seeded random weights for those keys.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::VaeConfig;
use crate::state_dict::{CheckpointError, StateDict};

impl VaeConfig {
    /// Every state-dict key with its PyTorch shape, in the current diffusers naming.
    pub fn state_dict_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut v = Vec::new();
        let ch = &self.block_out_channels;
        let last = *ch.last().expect("validated: non-empty");
        let lat = self.latent_channels;
        // Encoder.
        conv_shapes(&mut v, "encoder.conv_in", self.in_channels, ch[0], 3);
        let mut c_in = ch[0];
        for (i, &c) in ch.iter().enumerate() {
            for j in 0..self.layers_per_block {
                let p = format!("encoder.down_blocks.{i}.resnets.{j}");
                resnet_shapes(&mut v, &p, if j == 0 { c_in } else { c }, c);
            }
            if i + 1 < ch.len() {
                conv_shapes(
                    &mut v,
                    &format!("encoder.down_blocks.{i}.downsamplers.0.conv"),
                    c,
                    c,
                    3,
                );
            }
            c_in = c;
        }
        self.mid_shapes(&mut v, "encoder.mid_block", last);
        norm_shapes(&mut v, "encoder.conv_norm_out", last);
        conv_shapes(&mut v, "encoder.conv_out", last, 2 * lat, 3);
        if self.use_quant_conv {
            conv_shapes(&mut v, "quant_conv", 2 * lat, 2 * lat, 1);
        }
        // Decoder.
        if self.use_post_quant_conv {
            conv_shapes(&mut v, "post_quant_conv", lat, lat, 1);
        }
        conv_shapes(&mut v, "decoder.conv_in", lat, last, 3);
        self.mid_shapes(&mut v, "decoder.mid_block", last);
        let mut c_in = last;
        for (i, &c) in ch.iter().rev().enumerate() {
            for j in 0..=self.layers_per_block {
                let p = format!("decoder.up_blocks.{i}.resnets.{j}");
                resnet_shapes(&mut v, &p, if j == 0 { c_in } else { c }, c);
            }
            if i + 1 < ch.len() {
                conv_shapes(
                    &mut v,
                    &format!("decoder.up_blocks.{i}.upsamplers.0.conv"),
                    c,
                    c,
                    3,
                );
            }
            c_in = c;
        }
        norm_shapes(&mut v, "decoder.conv_norm_out", ch[0]);
        conv_shapes(&mut v, "decoder.conv_out", ch[0], self.out_channels, 3);
        v
    }

    fn mid_shapes(&self, v: &mut Vec<(String, Vec<usize>)>, prefix: &str, c: usize) {
        resnet_shapes(v, &format!("{prefix}.resnets.0"), c, c);
        if self.mid_block_add_attention {
            let a = format!("{prefix}.attentions.0");
            norm_shapes(v, &format!("{a}.group_norm"), c);
            for name in ["to_q", "to_k", "to_v", "to_out.0"] {
                v.push((format!("{a}.{name}.weight"), vec![c, c]));
                v.push((format!("{a}.{name}.bias"), vec![c]));
            }
        }
        resnet_shapes(v, &format!("{prefix}.resnets.1"), c, c);
    }

    /// A state dict of freshly initialised weights, deterministic in `seed`: convolutions and
    /// linears uniform in `±1/√fan_in` (PyTorch's default bound for the bias, and of the same
    /// order for the weight), GroupNorm γ = 1, β = 0. For tests and for tiny stand-in VAEs.
    pub fn random_state_dict(&self, seed: u64) -> StateDict {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut sd = StateDict::new();
        let shapes = self.state_dict_shapes();
        let fan_in: BTreeMap<String, usize> = shapes
            .iter()
            .filter(|(k, s)| k.ends_with(".weight") && s.len() >= 2)
            .map(|(k, s)| {
                (
                    k[..k.len() - ".weight".len()].to_string(),
                    s[1..].iter().product(),
                )
            })
            .collect();
        for (key, shape) in shapes {
            let n: usize = shape.iter().product();
            let (stem, leaf) = key.rsplit_once('.').expect("keys have a leaf");
            let data = match fan_in.get(stem) {
                Some(&fan) => {
                    let bound = 1.0 / (fan as f32).sqrt();
                    (0..n).map(|_| rng.random_range(-bound..bound)).collect()
                }
                None if leaf == "weight" => vec![1.0; n],
                None => vec![0.0; n],
            };
            sd.insert(key, shape, data);
        }
        sd
    }
}

fn conv_shapes(v: &mut Vec<(String, Vec<usize>)>, p: &str, c_in: usize, c_out: usize, k: usize) {
    v.push((format!("{p}.weight"), vec![c_out, c_in, k, k]));
    v.push((format!("{p}.bias"), vec![c_out]));
}

fn norm_shapes(v: &mut Vec<(String, Vec<usize>)>, p: &str, c: usize) {
    v.push((format!("{p}.weight"), vec![c]));
    v.push((format!("{p}.bias"), vec![c]));
}

fn resnet_shapes(v: &mut Vec<(String, Vec<usize>)>, p: &str, c_in: usize, c_out: usize) {
    norm_shapes(v, &format!("{p}.norm1"), c_in);
    conv_shapes(v, &format!("{p}.conv1"), c_in, c_out, 3);
    norm_shapes(v, &format!("{p}.norm2"), c_out);
    conv_shapes(v, &format!("{p}.conv2"), c_out, c_out, 3);
    if c_in != c_out {
        conv_shapes(v, &format!("{p}.conv_shortcut"), c_in, c_out, 1);
    }
}

/// Renames the older diffusers attention keys (`query`, `key`, `value`, `proj_attn`) to the
/// current ones (`to_q`, `to_k`, `to_v`, `to_out.0`) and flattens 1×1-conv-shaped attention
/// weights `[C, C, 1, 1]` to `[C, C]`. A file holding both namings for one layer is an error.
pub fn normalize_attention_keys(sd: StateDict) -> Result<StateDict, CheckpointError> {
    const RENAMES: [(&str, &str); 4] = [
        (".query.", ".to_q."),
        (".key.", ".to_k."),
        (".value.", ".to_v."),
        (".proj_attn.", ".to_out.0."),
    ];
    let mut out = StateDict::new();
    let mut renamed_from: BTreeMap<String, String> = BTreeMap::new();
    for (key, t) in sd.tensors {
        let mut new_key = key.clone();
        if key.contains(".attentions.") {
            for (old, new) in RENAMES {
                if key.contains(old) {
                    new_key = key.replacen(old, new, 1);
                }
            }
        }
        let mut shape = t.shape;
        if new_key.contains(".attentions.")
            && new_key.ends_with(".weight")
            && shape.len() == 4
            && shape[2] == 1
            && shape[3] == 1
        {
            shape.truncate(2);
        }
        if new_key != key {
            renamed_from.insert(new_key.clone(), key.clone());
        }
        if out.contains(&new_key) {
            let other = renamed_from
                .get(&new_key)
                .cloned()
                .unwrap_or(new_key.clone());
            return Err(CheckpointError::ConfigMismatch(format!(
                "the file holds both '{key}' and '{other}' (old and new attention names for one \
                 layer)"
            )));
        }
        out.insert(new_key, shape, t.data);
    }
    Ok(out)
}
