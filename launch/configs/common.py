"""Defaults shared by every experiment config."""

import ml_collections

from jaxbio import replicas


def base_config() -> ml_collections.ConfigDict:
  """Returns the fields every experiment has; experiment files fill them in."""
  c = ml_collections.ConfigDict()
  c.version = 1
  c.seed = 0
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.num_epochs = 10
  c.steps_per_call = 100        # training steps per compiled call.
  # "while": the chunk's steps in one XLA while loop; "unrolled": one copy of the step
  # per step of the chunk (compile time grows with steps_per_call). XLA:CPU runs
  # convolutions inside a while loop several times slower, so conv nets on CPU use
  # "unrolled" with few steps per call.
  c.chunk_loop = "while"
  # "device": the decoded split on every device, batches gathered on device
  # (fastest; for datasets that fit). "host": the split in host memory; each
  # process sends only its own slice of every batch to its devices (a streamed
  # dataset, too large for memory, needs "host": its batches are decoded from disk).
  c.data_placement = "device"
  c.alignment_every = 500       # steps between alignment metrics, and at every epoch end (0: never).
  c.log_every = 100             # steps between training-loss/steps-per-s TensorBoard points (0: never).
  c.log_every_secs = 10.0       # seconds between progress lines on the console.
  # Stop when a step's training loss exceeds this many times the run's first-step
  # loss (a run that exploded without a NaN); 0 turns the check off.
  c.divergence_factor = 100.0
  c.dataset = ml_collections.ConfigDict(dict(
      name="mnist", data_dir="", train_split="train", test_split="test", validation_split="",
      normalize="scale", augment="none", crop_padding=4, std_multiplier=1.0))
  c.model = ml_collections.ConfigDict(dict(arch="mlp"))
  c.rule = ml_collections.ConfigDict(dict(name="bp"))
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adam", learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8, momentum=0.0,
      weight_decay=0.0, schedule="constant"))
  c.homeostasis = ml_collections.ConfigDict(dict(weight=0.0, num_probes=5))
  # Several seeds and hyperparameter draws trained together in one program
  # (jaxbio.replicas): seeds (a count from config.seed) or seed_list; hparams, a
  # JSON object of per-draw value lists, or search, a JSON random-search space
  # with `draws` draws by `search_seed`. One replica: a plain run.
  c.replicas = replicas.default_config()
  # Checkpoints in <workdir>/checkpoints: every `every_steps` steps (0: at the end
  # of every epoch) and at the end, keeping the last `keep`.
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=0, keep=3))
  return c
