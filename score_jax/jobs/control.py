"""What the sampler sees at sample time, in one object: ``Control``.

A ``Control`` is

* a score **source**: how the network's parameters (and the class each sample asks for)
  become the score the sampler follows — the network as it is (``network``: a class-
  conditional one with labels 0 … K−1 cycled over the samples), its unconditional score
  (``unconditional``), classifier-free guidance (``classifier_free``), classifier guidance
  (``classifier_guided``) or autoguidance by a worse model (``autoguided``), each limited to a
  σ interval when asked;
* score **transforms** applied after it, in order: posterior guidance of an observation
  (``jobs.observations``) wraps whichever source came first, so class guidance and inpainting
  combine;
* an optional **constraint**: a projection between sampler steps (replacement / RePaint,
  ``sampling.constraints``), never a score;
* its traced **auxiliaries**: ``aux`` for the whole run (the noise-conditional classifier's
  parameters) and ``per_sample`` arrays [N, ...] cut into chunks with the samples (known
  pixels and masks), both arguments of the compiled sampler, so a new observation of the same
  shapes reuses it;
* ``labels``: the requested classes, sample j asking for ``labels[j mod L]`` (None: none);
* ``record``: what the job's metrics.json says about it.

``Control.observe(observation)`` adds an observation (transforms, constraint, per-sample
arrays) to a class part; ``from_guidance`` builds the class part of ``config.guidance``.
Samplers are made from a Control by ``jobs.sampler.make_sampler(setup, n, control)``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from score_jax import experiment
from score_jax import guidance as guidance_lib
from score_jax.jobs import classifiers
from score_jax.sampling import constraints

Array = Any
ScoreFn = Callable[[Array, Array], Array]


@dataclasses.dataclass(frozen=True)
class Chunk:
  """What one compiled sampler call sees (all traced).

  Attributes:
    params: the score network's parameters.
    aux: the control's whole-run auxiliaries.
    arrays: the control's per-sample arrays, the rows of this chunk ([b, ...] each).
    index: [b] positions of the chunk's samples in the whole set.
    labels: [b] the classes they ask for, or None.
  """

  params: Any
  aux: Mapping[str, Any]
  arrays: Mapping[str, Array]
  index: Array
  labels: Optional[Array]


Source = Callable[[experiment.Setup, Chunk], ScoreFn]
Transform = Callable[[ScoreFn, experiment.Setup, Chunk], ScoreFn]
ConstraintOf = Callable[[Chunk], constraints.Replacement]


@dataclasses.dataclass(frozen=True)
class Observation:
  """What is known of the samples: score transforms, a constraint and their per-sample arrays."""

  transforms: tuple[Transform, ...] = ()
  constraint: Optional[ConstraintOf] = None
  per_sample: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
  record: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Control:
  """A score source, transforms, an optional constraint and their traced auxiliaries (see the module)."""

  source: Source
  transforms: tuple[Transform, ...] = ()
  constraint: Optional[ConstraintOf] = None
  aux: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  per_sample: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
  labels: Optional[np.ndarray] = None
  record: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def observe(self, observation: Observation) -> "Control":
    """This control with ``observation``'s transforms appended and its constraint and arrays added."""
    if self.constraint is not None and observation.constraint is not None:
      raise ValueError("a Control takes one constraint; this one has a constraint already.")
    clash = set(self.per_sample) & set(observation.per_sample)
    if clash:
      raise ValueError(f"per-sample arrays {sorted(clash)} are given twice.")
    return dataclasses.replace(self, transforms=self.transforms + tuple(observation.transforms),
                               constraint=self.constraint or observation.constraint,
                               per_sample={**self.per_sample, **observation.per_sample},
                               record={**self.record, **observation.record})

  def labels_of(self, index: Array) -> Optional[Array]:
    """The requested classes [b] of the samples at positions ``index`` [b] (traced), or None."""
    if self.labels is None:
      return None
    table = jnp.asarray(self.labels)
    return table[jnp.asarray(index) % table.shape[0]]

  def sample_labels(self, num_samples: int) -> Optional[np.ndarray]:
    """The requested class of each of ``num_samples`` samples, int32 [N], or None."""
    if self.labels is None:
      return None
    return self.labels[np.arange(num_samples) % self.labels.shape[0]]

  def score_fn(self, setup: experiment.Setup, chunk: Chunk) -> ScoreFn:
    """The score the sampler follows for ``chunk``: the source, then every transform."""
    score = self.source(setup, chunk)
    for transform in self.transforms:
      score = transform(score, setup, chunk)
    return score

  def constraint_of(self, chunk: Chunk) -> Optional[constraints.Replacement]:
    return None if self.constraint is None else self.constraint(chunk)


# --- sources ------------------------------------------------------------------------------
def network(setup: experiment.Setup) -> Control:
  """The network as it is: a class-conditional one asks for labels 0 … K−1 cycled over the
  samples (a K-column grid has one class per column), an unconditional one for none."""
  if not setup.num_classes:
    return unconditional(setup)
  return Control(source=lambda s, c: s.score_fn(c.params, c.labels),
                 labels=np.arange(setup.num_classes, dtype=np.int32))


def unconditional(setup: experiment.Setup) -> Control:
  """The unconditional score (a class-conditional network with its null label)."""
  del setup
  return Control(source=lambda s, c: s.score_fn(c.params, None))


def classifier_free(setup: experiment.Setup, labels: np.ndarray, w: float, record: Mapping[str, Any],
                    sigma_interval: guidance_lib.Interval = None) -> Control:
  """Classifier-free guidance (Ho & Salimans 2022): (1 + w) s(x, t, y) − w s(x, t, ∅), only for
  σ in ``sigma_interval`` when given."""
  null = setup.num_classes

  def source(s: experiment.Setup, c: Chunk) -> ScoreFn:
    labeled = lambda x, t, lab: s.score_fn(c.params, lab)(x, t)
    return guidance_lib.classifier_free_guidance(labeled, c.labels, w=float(w), null_label=null, sde=s.sde,
                                                 sigma_interval=sigma_interval)

  return Control(source=source, labels=np.asarray(labels, np.int32), record={"guidance": dict(record)})


def classifier_guided(setup: experiment.Setup, classifier: classifiers.NoisyClassifier, labels: np.ndarray,
                      strategy: guidance_lib.Guidance, record: Mapping[str, Any]) -> Control:
  """Classifier guidance of the unconditional score: s(x, t) + λ(σ) ∇_x log p_t(y | x), the
  classifier's parameters traced (``aux["classifier"]``)."""
  sde, model = setup.sde, classifier.model

  def source(s: experiment.Setup, c: Chunk) -> ScoreFn:
    classifier_params = c.aux["classifier"]

    def log_prob_fn(x, t):
      logits = model.apply({"params": classifier_params}, x, sde.noise_level(t))  # [B, K]
      return jax.nn.log_softmax(logits, axis=-1)

    return guidance_lib.classifier_guidance(s.score_fn(c.params, None), log_prob_fn, c.labels, sde=sde,
                                            guidance=strategy)

  return Control(source=source, aux={"classifier": classifier.params}, labels=np.asarray(labels, np.int32),
                 record={"guidance": dict(record)})


@dataclasses.dataclass(frozen=True)
class Guide:
  """Autoguidance's worse model: its components, EMA parameters, where they came from, and
  whether it shares the guided network's architecture (then both run in one batched call)."""

  setup: experiment.Setup
  params: Any
  workdir: str
  step: int
  shared: bool


def load_guide(options: experiment.GuidanceOptions, setup: experiment.Setup, workdir: str) -> Guide:
  """The guiding run of ``config.guidance`` (its own config.json and EMA parameters), checked
  against the guided model — the same data shape, SDE, classes and parametrization — before
  its parameters are read.

  Raises:
    ConfigError: a guide of another data shape, SDE, parametrization or class count.
    FileNotFoundError: no such run or step.
  """
  from score_jax import runs  # pylint: disable=g-import-not-at-top
  from score_jax.jobs import params as params_lib  # pylint: disable=g-import-not-at-top
  where = options.guide_workdir or workdir
  field = "config.guidance.guide_workdir" if options.guide_workdir else "config.guidance.guide_step"
  g = experiment.build(runs.load_config(where, options.guide_step))  # checked before any parameter is read
  for what, mine, theirs in (("data shape", setup.data_shape, g.data_shape), ("SDE", setup.sde, g.sde),
                             ("classes", setup.num_classes, g.num_classes),
                             ("parametrization", setup.parametrization, g.parametrization)):
    experiment.check(mine == theirs, field, f"the guiding run in {where} has {what} {theirs!r} but the guided model "
                     f"has {mine!r}; autoguidance needs a worse model of the same task.")
  step, params = params_lib.load_ema_params(g, where, options.guide_step)
  shared = (g.model == setup.model and g.conditioning == setup.conditioning and g.centered == setup.centered
            and g.sigma_data == setup.sigma_data)
  return Guide(setup=g, params=params, workdir=os.path.abspath(where), step=step, shared=shared)


def autoguided(setup: experiment.Setup, guide: Guide, labels: Optional[np.ndarray], w: float,
               record: Mapping[str, Any], sigma_interval: guidance_lib.Interval = None) -> Control:
  """Autoguidance (Karras et al. 2024): (1 + w) s_good − w s_bad, the guide's parameters traced
  (``aux["guide"]``).  A guide of the same architecture is evaluated with the guided network in
  one batched call (the two parameter sets stacked and vmapped)."""

  def source(s: experiment.Setup, c: Chunk) -> ScoreFn:
    if guide.shared:
      def pair(x, t):
        stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), c.params, c.aux["guide"])
        both = jax.vmap(lambda p: s.score_fn(p, c.labels)(x, t))(stacked)  # [2, B, ...]
        return both[0], both[1]
      return guidance_lib.autoguidance(None, w=float(w), pair_fn=pair, sde=s.sde, sigma_interval=sigma_interval)
    return guidance_lib.autoguidance(s.score_fn(c.params, c.labels), guide.setup.score_fn(c.aux["guide"], c.labels),
                                     w=float(w), sde=s.sde, sigma_interval=sigma_interval)

  labels = None if labels is None or not len(labels) else np.asarray(labels, np.int32)
  return Control(source=source, aux={"guide": guide.params}, labels=labels,
                 record={"guidance": {**record, "guide_workdir": guide.workdir, "guide_step": guide.step,
                                      "guide_shares_architecture": guide.shared}})


def from_guidance(options: experiment.GuidanceOptions, setup: experiment.Setup, workdir: str,
                  default: Control) -> Control:
  """The class part of ``config.guidance``: ``default`` for kind "none", else CFG or classifier
  guidance (its classifier loaded and checked against the data and the SDE).

  Raises:
    FileNotFoundError: classifier guidance without a trained noise-conditional classifier.
    ConfigError: a classifier trained on other data or under another SDE.
  """
  if options.kind == "none":
    return default
  if options.kind == "cfg":
    return classifier_free(setup, options.labels, options.w, options.record, options.sigma_interval)
  if options.kind == "autoguidance":
    return autoguided(setup, load_guide(options, setup, workdir), options.labels if setup.num_classes else None,
                      options.w, options.record, options.sigma_interval)
  path = classifiers.resolve_dir(options.classifier_dir, workdir, "noisy_classifier")
  classifier = classifiers.load_noisy_classifier(path, setup.data, sde=setup.sde)
  return classifier_guided(setup, classifier, options.labels, options.strategy,
                           {**options.record, "classifier_dir": os.path.abspath(path)})


__all__ = ["Chunk", "Control", "Guide", "Observation", "autoguided", "classifier_free", "classifier_guided",
           "from_guidance", "load_guide", "network", "unconditional"]
