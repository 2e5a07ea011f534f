"""The only reader of a config: ``build(config) -> Setup`` and typed option records.

Every other module gets plain values, never the ConfigDict (``tests/test_layering.py`` checks
it): a mode calls ``experiment.build`` for the components (SDE, data, network, optimizer, loss,
sampler) and ``experiment.<section>_options`` for what it reads of its own section, and every
bad value is a ``ConfigError`` naming the field, raised before anything compiles.

    checks.py           ConfigError and the one-value checks every reader uses
    data.py             config.sde, config.data      -> SDE, ToyData / ImageData
    components.py       config.model, optim, training, sampling -> Setup (``build``), the run's keys
    state.py            fresh and abstract parameters and train state of a Setup
    options.py          config.sampling / training fields of the jobs, config.eval, the classifiers,
                        config.posthoc, config.distill
    control_options.py  config.guidance, config.controllable

Defaults of the job sections live in ``configs/common.py`` alone (``eval_section``,
``guidance_section``, ...): a config without a section gets that section from there.
"""

from score_jax.experiment.checks import (ConfigDict, ConfigError, as_dict, check, config_field, int_field, is_int,
                                         is_number, merge_defaults, positive_field)
from score_jax.experiment.components import (COMPUTE_DTYPES, KEY_STREAMS, LOSSES, SAMPLE_PARAMS, Setup, build,
                                             build_ema, conversion_target, forward, keys, seed_of)
from score_jax.experiment.control_options import (CONTROLLABLE_MODES, GUIDANCE_KINDS, ControllableOptions,
                                                  GuidanceOptions, controllable_options, guidance_options)
from score_jax.experiment.data import DATA_KINDS, IMAGE_KINDS, Data, ImageData, ToyData, build_data, build_image_data, build_sde
from score_jax.experiment.state import (abstract_batch, abstract_state, init_params, init_state, num_params, param_shapes,
                                        state_from_params)
from score_jax.experiment.options import (EXTRACTORS, ClassifierOptions, DistillOptions, EvalOptions, FitOptions,
                                          NoisyClassifierOptions, PosthocOptions, SampleOptions, TrainOptions,
                                          classifier_options, distill_options, eval_options,
                                          noisy_classifier_options, posthoc_options, sample_options, train_options)


def apply_overrides(config: ConfigDict, overrides: dict) -> None:
  """Sets dotted fields of ``config`` in place (``{"sampling.method": "ode"}``); a field the
  config does not have is a ConfigError naming it."""
  for name, value in overrides.items():
    section, _, field = name.rpartition(".")
    node = config
    for part in filter(None, section.split(".")):
      check(part in node, f"config.{name}", "no such field in the run's config.")
      node = node[part]
    check(field in node, f"config.{name}", "no such field in the run's config.")
    node[field] = value
