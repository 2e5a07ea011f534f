"""VP SDE defaults: DDPM++ (continuous) on CIFAR-10, score_sde's configs/vp/cifar10_ddpmpp_continuous.

    python main.py --config=configs/default_vp.py --workdir=runs/cifar10_vp --mode=train \
        --config.data.path=$TFDS_DATA_DIR

DDPM++ is NCSN++ with DDPM-style choices: positional embedding of 999·t, no FIR, no
progressive growing, data centered to [−1, 1], ε-prediction (score = −ε / std).
"""

import ml_collections

from configs import common


def ddpmpp_network() -> ml_collections.ConfigDict:
  """score_sde's DDPM++ (cifar10_ddpmpp_continuous) as NCSNpp fields."""
  return ml_collections.ConfigDict(dict(
      nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4, attn_resolutions=(16,), dropout=0.1,
      resblock_type="biggan", resamp_with_conv=True, fir=False, fir_kernel=(1, 3, 3, 1), skip_rescale=True,
      progressive="none", progressive_input="none", progressive_combine="sum",
      embedding_type="positional", fourier_scale=16.0, init_scale=0.0, conditional=True))


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = common.base_config()
  config.sde.name = "vp"
  config.data.centered = True
  config.model.name = "ncsnpp"
  config.model.network = ddpmpp_network()
  config.model.parametrization = "noise"
  config.model.conditioning = "ddpm_step"  # 999·t into the positional embedding
  config.model.ema.update(dict(rate=0.9999, rampup_ratio=0.0))  # score_sde: a constant rate from step 0
  config.training.loss_options = ml_collections.ConfigDict(dict(weighting="sigma2", reduce="mean"))
  config.sampling.method = "pc"
  config.sampling.pc.update(dict(predictor="euler_maruyama", corrector="none"))
  config.sampling.adaptive.data_range = "[-1,1]"
  return common.finalize(config, variant, "configs/default_vp.py")
