"""Training on a streamed dataset (decoded from disk batch by batch, as ImageNet is)."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

from jaxbio import checkpoint, data, registry, train
from jaxbio.data import testing as data_testing
from launch.configs import bartunov


def _small_mnist(workdir_name, tmp_path, root):
  config = bartunov.get_config("mnist,fc,dtp")
  config.dataset.data_dir = root
  config.dataset.train_split, config.dataset.test_split = "train[:1280]", "test[:700]"
  config.dataset.validation_split = "train[1280:1500]"
  config.model.widths = (32, 32)
  config.batch_size, config.num_epochs, config.steps_per_call = 64, 1, 7
  config.eval_batch_size = 64  # 8 batches per streamed chunk: 512 + 188 test examples.
  config.alignment_every = 10
  config.data_placement = "host"
  return config, str(tmp_path / workdir_name)


def _final_state(config, workdir):
  exp = train.build_experiment(config, 1280)
  ckpt = checkpoint.Checkpointer(f"{workdir}/checkpoints")
  state, _, step = ckpt.restore_latest(jax.eval_shape(lambda: train.init_state(exp, 0)))
  ckpt.close()
  return state, step


def test_a_streamed_split_trains_and_evaluates_exactly_like_one_in_memory(tmp_path, monkeypatch):
  root = data.shared_data_dir()
  if root is None:
    pytest.skip("../shared/data/tfds (real MNIST) not present")
  monkeypatch.setenv(data.pipeline.CACHE_DIR_ENV, str(tmp_path / "cache"))
  config, ref_dir = _small_mnist("in_memory", tmp_path, root)
  ref = train.train_and_evaluate(config, ref_dir)
  monkeypatch.setitem(registry.DATASETS, "mnist",
                      dataclasses.replace(registry.DATASETS["mnist"], streamed=True))
  loads = []
  real = data.load_streamed
  monkeypatch.setattr(data.pipeline, "load_streamed",
                      lambda *a, **k: loads.append(a[1]) or real(*a, **k))
  hits = []
  real_close = train._Prefetch.close
  monkeypatch.setattr(train._Prefetch, "close",
                      lambda self: hits.append(self.hits) or real_close(self))
  config, streamed_dir = _small_mnist("streamed", tmp_path, root)
  got = train.train_and_evaluate(config, streamed_dir)
  # 40 steps in chunks of at most 7, cut at every alignment step (10) and pass end (20):
  # 8 chunks, the 7 after the first decoded ahead.
  assert hits == [7]
  assert loads == ["train[:1280]", "test[:700]", "train[1280:1500]"]
  (a, step_a), (b, step_b) = _final_state(config, ref_dir), _final_state(config, streamed_dir)
  assert step_a == step_b == 40  # 20 steps per pass, inverse then forward
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  for k in ("train/loss", "train_inverse/inverse_loss", "align/update_angle/all"):
    assert got[k] == ref[k], k
  for k in ("test/accuracy", "val/accuracy"):  # whole split, or 512 + 188 examples
    assert got[k] == ref[k], k
  for k in ("test/loss", "val/loss"):  # the same sums, added in another order
    assert got[k] == pytest.approx(ref[k], rel=1e-6), k


@pytest.mark.slow  # in CI's slow run (see setup.cfg)
def test_imagenet_lc_config_trains_on_mock_data_with_streamed_resized_images(tmp_path):
  config = bartunov.get_config("imagenet,lc,dtp")
  assert (config.dataset.name, config.dataset.test_split) == ("imagenet2012", "validation")
  assert config.data_placement == "host"
  config.model.convs = ((4, 9, 4), (4, 3, 2))  # Table 3's first two layers, narrower
  config.batch_size, config.num_epochs, config.steps_per_call = 8, 1, 3
  config.eval_batch_size, config.alignment_every = 8, 4
  with data_testing.mock_data(40):  # records of random sizes, resized to 224 x 224
    config.dataset.data_dir = str(tmp_path / "tfds")
    record = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert record["epoch"] == 1
  assert np.isfinite(record["test/loss"]) and np.isfinite(record["train_inverse/inverse_loss"])
  assert "align/reconstruction_error/layer1" in record
  metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
  rows = [json.loads(line) for line in metrics.splitlines()]
  assert [r["epoch"] for r in rows] == [1]


def test_a_streamed_dataset_needs_host_placement():
  config = bartunov.get_config("imagenet,lc,bp")
  config.data_placement = "device"
  with pytest.raises(ValueError, match="^dataset 'imagenet2012' is streamed from disk .* needs "
                     "data_placement 'host', got 'device'$"):
    registry.validate(config)


def test_imagenet_configs_are_table_2s_rows():
  with pytest.raises(ValueError, match="ran no ImageNet 'lc,sdtp,alternating'.*imagenet,conv,bp$"):
    bartunov.get_config("imagenet,lc,sdtp")
  with pytest.raises(ValueError, match="ran no ImageNet 'fc,bp'"):
    bartunov.get_config("imagenet,fc,bp")
  dtp = bartunov.get_config("imagenet,lc,dtp,parallel")
  assert (dtp.optimizer.learning_rate, dtp.rule.inverse_optimizer.learning_rate,
          dtp.rule.alpha, dtp.rule.sigma) == (0.000217, 0.000234, 0.163359, 0.192835)
  assert bartunov.get_config("imagenet,conv,bp").optimizer.learning_rate == 0.000049
