"""VE SDE defaults: NCSN++ (continuous) on CIFAR-10, score_sde's configs/ve/cifar10_ncsnpp_continuous.

    python main.py --config=configs/default_ve.py --workdir=runs/cifar10_ve --mode=train \
        --config.data.path=$TFDS_DATA_DIR

Per-dataset files under ``configs/ve/`` start from this one and override a few fields.
"""

import ml_collections

from configs import common


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = common.base_config()
  config.sde.name = "ve"
  config.sde.ve.update(dict(sigma_min=0.01, sigma_max=50.0))
  config.model.name = "ncsnpp"
  config.model.network = ml_collections.ConfigDict(dict(
      nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4, attn_resolutions=(16,), dropout=0.1,
      resblock_type="biggan", resamp_with_conv=True, fir=True, fir_kernel=(1, 3, 3, 1), skip_rescale=True,
      progressive="none", progressive_input="residual", progressive_combine="sum",
      embedding_type="fourier", fourier_scale=16.0, init_scale=0.0, conditional=True))
  config.model.parametrization = "noise"  # VE: network output / σ is the score
  config.model.conditioning = "sigma"  # Fourier features of log σ(t)
  config.model.ema.update(dict(rate=0.999, rampup_ratio=0.0))  # score_sde: a constant rate from step 0
  config.training.loss_options = ml_collections.ConfigDict(dict(weighting="sigma2", reduce="sum"))
  config.sampling.method = "pc"
  config.sampling.pc.update(dict(predictor="reverse_diffusion", corrector="langevin", snr=0.16))
  return common.finalize(config, variant, "configs/default_ve.py")
