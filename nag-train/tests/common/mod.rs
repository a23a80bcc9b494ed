//! What the trainer test binaries share.

use nag_train::train::TrainConfig;

/// The CPU backend the trainer tests run on.
pub type B = burn_autodiff::Autodiff<burn_ndarray::NdArray<f32>>;

/// A 4-step run of the tiny preset on `shapes`, checkpointing every 2 steps.
pub fn small_run() -> TrainConfig {
    TrainConfig {
        data: "shapes".into(),
        model: "tiny".into(),
        steps: 4,
        batch: 4,
        checkpoint_every: 2,
        log_every: 1,
        workers: 1,
        ema_decay: 0.9,
        seed: 7,
        ..TrainConfig::default()
    }
}
