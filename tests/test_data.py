"""Tests for jaxbio.data: specs, loading (real and mocked TFDS), transforms."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxbio import data
from jaxbio.data import testing as data_testing

_MOCK_EXAMPLES = 7


def _real_dir() -> str:
  """The shared TFDS directory, or skips the test if it is absent."""
  root = data.shared_data_dir()
  if root is None:
    pytest.skip('no <repo>/../shared/data/tfds with prepared MNIST datasets')
  return root


@pytest.fixture(scope='module')
def mnist_train() -> data.ArrayDataset:
  return data.load('mnist', 'train', _real_dir())


# ------------------------------------------------------------------ real data


def test_mnist_train_size_and_mean(mnist_train):
  assert mnist_train.images.shape == (60_000, 28, 28, 1)
  assert mnist_train.images.dtype == np.uint8
  assert mnist_train.labels.shape == (60_000,)
  assert mnist_train.labels.dtype == np.int32
  assert round(float(mnist_train.images.mean()) / 255, 4) == 0.1307
  assert set(np.unique(mnist_train.labels)) == set(range(10))
  assert mnist_train.split == 'train'
  assert mnist_train.spec is data.DATASETS['mnist']


def test_mnist_test_size():
  test = data.load('mnist', data.DATASETS['mnist'].test_split, _real_dir())
  assert test.images.shape == (10_000, 28, 28, 1)
  assert test.labels.shape == (10_000,)


def test_fashion_mnist_mean():
  train = data.load('fashion_mnist', 'train', _real_dir())
  assert train.images.shape == (60_000, 28, 28, 1)
  assert abs(float(train.images.mean()) / 255 - 0.2861) < 5e-4


def test_split_slice_is_prefix_of_full_split(mnist_train):
  head = data.load('mnist', 'train[:10%]', _real_dir())
  assert head.images.shape[0] == 6_000
  np.testing.assert_array_equal(head.images, mnist_train.images[:6_000])
  np.testing.assert_array_equal(head.labels, mnist_train.labels[:6_000])


def test_small_chunks_decode_the_same_records(mnist_train):
  part = data.load('mnist', 'train[:1000]', _real_dir(), chunk_size=300)
  np.testing.assert_array_equal(part.images, mnist_train.images[:1000])
  np.testing.assert_array_equal(part.labels, mnist_train.labels[:1000])


def test_unknown_split_lists_valid_splits():
  with pytest.raises(ValueError, match=r"'validation'.*\['test', 'train'\]"):
    data.load('mnist', 'validation', _real_dir())


def test_standardize_real_mean_image_is_zero(mnist_train):
  mean_image = mnist_train.images.astype(np.float64).mean(axis=0)
  out = data.normalize(mean_image[None], mnist_train.spec, 'standardize')
  assert abs(float(out.mean())) < 1e-3
  subset = data.normalize(mnist_train.images[:10_000], mnist_train.spec,
                          'standardize')
  assert abs(float(subset.std()) - 1.0) < 0.02


# ------------------------------------------------------------- mocked TFDS


@pytest.mark.parametrize('name', sorted(data.DATASETS))
def test_mocked_load_shapes_and_records(name, tmp_path):
  spec = data.DATASETS[name]
  with data_testing.mock_data(_MOCK_EXAMPLES):
    for split in (spec.train_split, spec.test_split):
      ds = data.load(name, split, str(tmp_path), chunk_size=3)
      assert ds.images.shape == (_MOCK_EXAMPLES, *spec.image_shape)
      assert ds.images.dtype == np.uint8
      assert ds.labels.shape == (_MOCK_EXAMPLES,)
      assert ds.labels.dtype == np.int32
      assert ds.split == split and ds.spec is spec
    source = tfds.data_source(name, split=spec.train_split, download=False)
    expected = [source[i] for i in range(_MOCK_EXAMPLES)]
    info = tfds.builder(name).info
  images = ds.images[np.arange(_MOCK_EXAMPLES)] if spec.streamed else ds.images
  np.testing.assert_array_equal(
      images, np.stack([data.decode_image(ex['image'], spec) for ex in expected]))
  if not spec.resize:
    np.testing.assert_array_equal(images, np.stack([ex['image'] for ex in expected]))
  np.testing.assert_array_equal(
      ds.labels, np.array([ex['label'] for ex in expected]))
  assert info.features['label'].num_classes == spec.num_classes
  if spec.resize:  # records of any size, resized on decoding
    assert info.features['image'].shape == (None, None, spec.image_shape[-1])
  else:
    assert info.features['image'].shape == spec.image_shape


def test_streamed_split_decodes_the_same_images_as_a_full_load():
  root = _real_dir()
  full = data.load('mnist', 'test[:3000]', root)
  streamed = data.load_streamed('mnist', 'test[:3000]', root, cache=False)
  assert isinstance(streamed.images, data.StreamedImages)
  assert streamed.images.shape == full.images.shape and len(streamed.images) == 3000
  np.testing.assert_array_equal(streamed.labels, full.labels)
  idx = np.random.default_rng(0).integers(0, 3000, (3, 64))
  idx[0, :2] = (0, 2999)
  np.testing.assert_array_equal(streamed.images[idx], full.images[idx])
  np.testing.assert_array_equal(streamed.images[10:20], full.images[10:20])
  np.testing.assert_array_equal(streamed.images[[-1]], full.images[[-1]])
  assert streamed.images[np.zeros((0,), np.int32)].shape == (0, 28, 28, 1)
  np.testing.assert_array_equal(streamed.images[np.array([5, -3], np.int16)],
                                full.images[[5, -3]])
  assert streamed.images[[]].shape == (0, 28, 28, 1)
  with pytest.raises(IndexError, match=r'^index 3000 out of range for 3000 images '
                     r'\(valid: -3000\.\.2999\)$'):
    streamed.images[[1, 3000]]
  with pytest.raises(TypeError, match='got a tuple'):
    streamed.images[3, 0]
  with pytest.raises(TypeError, match='streamed from disk'):
    np.asarray(streamed.images)


def test_streamed_labels_are_cached(tmp_path, monkeypatch):
  root = _real_dir()
  monkeypatch.setenv(data.pipeline.CACHE_DIR_ENV, str(tmp_path))
  first = data.load_streamed('mnist', 'test[:500]', root)
  files = list(tmp_path.glob('mnist-test_500_-labels-*.npz'))
  assert len(files) == 1
  with np.load(files[0]) as npz:
    assert sorted(npz.files) == ['key', 'labels']
    np.testing.assert_array_equal(npz['labels'], first.labels)
  def no_decoding(*args):
    raise AssertionError('labels decoded again despite the cache')

  monkeypatch.setattr(data.pipeline, '_stack_labels', no_decoding)
  again = data.load_streamed('mnist', 'test[:500]', root)
  np.testing.assert_array_equal(again.labels, first.labels)


def test_decode_image_resizes_and_checks_shapes():
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  spec = data.DATASETS['imagenet2012']
  assert spec.image_shape == (224, 224, 3) and spec.resize and spec.streamed
  flat = np.zeros((30, 50, 3), np.uint8) + np.array([10, 200, 77], np.uint8)
  buf = io.BytesIO()
  Image.fromarray(flat).save(buf, format='PNG')
  for image in (flat, buf.getvalue()):  # a constant image stays constant
    out = data.decode_image(image, spec)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.broadcast_to(flat[0, 0], out.shape))
  ramp = np.tile(np.arange(0, 250, 5, dtype=np.uint8)[None, :, None], (224, 1, 3))
  out = data.decode_image(ramp, spec)  # 50 -> 224 columns: a monotone ramp still
  assert np.all(np.diff(out[0, :, 0].astype(int)) >= 0) and out[0, 0, 0] < 10 < 240 < out[0, -1, 0]
  gray = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28, 1)
  np.testing.assert_array_equal(data.decode_image(gray, data.DATASETS['mnist']), gray)
  with pytest.raises(ValueError, match="'mnist' decoded to an image of size 20x28; expected 28x28"):
    data.decode_image(gray[:20], data.DATASETS['mnist'])


def test_specs_are_consistent():
  assert sorted(data.DATASETS) == sorted([
      'mnist', 'fashion_mnist', 'cifar10', 'cifar100', 'svhn_cropped',
      'imagenet_resized/32x32', 'imagenet2012'])
  for name, spec in data.DATASETS.items():
    assert spec.name == name
    assert len(spec.mean) == len(spec.std) == spec.image_shape[-1]
    assert all(0 < m < 1 for m in spec.mean)
    assert all(0 < s < 1 for s in spec.std)
    expected_test = 'validation' if name.startswith('imagenet') else 'test'
    assert (spec.train_split, spec.test_split) == ('train', expected_test)
  assert data.DATASETS['cifar100'].num_classes == 100
  assert data.DATASETS['imagenet_resized/32x32'].num_classes == 1000


# ------------------------------------------------------------ input errors


def test_unknown_dataset_lists_choices():
  with pytest.raises(ValueError, match='cifar10') as info:
    data.load('cifar11', 'train')
  message = str(info.value)
  assert "'cifar11'" in message
  assert all(name in message for name in data.DATASETS)


def test_missing_dataset_is_one_line_with_directory(tmp_path):
  with pytest.raises(data.DatasetNotFoundError) as info:
    data.load('cifar10', 'train', str(tmp_path))
  message = str(info.value)
  assert isinstance(info.value, ValueError)
  assert '\n' not in message
  assert str(tmp_path) in message
  assert 'tfds build cifar10' in message


def test_bad_chunk_size():
  with pytest.raises(ValueError, match='chunk_size'):
    data.load('mnist', 'train', chunk_size=0)


def test_data_dir_precedence(monkeypatch):
  monkeypatch.setenv('TFDS_DATA_DIR', '/env/dir')
  assert data.resolve_data_dir('/explicit/dir') == '/explicit/dir'
  assert data.resolve_data_dir(None) == '/env/dir'
  assert data.resolve_data_dir('') == '/env/dir'
  monkeypatch.delenv('TFDS_DATA_DIR')
  default = os.path.join(os.path.expanduser('~'), 'tensorflow_datasets')
  assert data.resolve_data_dir(None) == default


def test_shared_data_dir_location(tmp_path, monkeypatch):
  fake_module = tmp_path / 'repo' / 'jaxbio' / 'data' / 'pipeline.py'
  monkeypatch.setattr(data.pipeline, '__file__', str(fake_module))
  assert data.shared_data_dir() is None
  shared = tmp_path / 'shared' / 'data' / 'tfds'
  shared.mkdir(parents=True)
  assert data.shared_data_dir() == str(shared)


# ---------------------------------------------------------------- normalize


def test_normalize_formulas_and_dtype():
  x = np.arange(2 * 2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 2, 3) * 10
  mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)
  scaled = data.normalize(x, None, 'scale')
  standard = jax.jit(data.normalize, static_argnums=(1, 2))(
      x, (mean, std), 'standardize')
  assert scaled.dtype == jnp.float32 and standard.dtype == jnp.float32
  np.testing.assert_allclose(scaled, x / 255.0, rtol=1e-6)
  expected = (x / 255.0 - np.array(mean)) / np.array(std)
  np.testing.assert_allclose(standard, expected, rtol=1e-5, atol=1e-6)
  from_float = data.normalize(x.astype(np.float32), (mean, std), 'standardize')
  np.testing.assert_allclose(from_float, standard, rtol=1e-6)


def test_normalize_errors():
  x = np.zeros((1, 2, 2, 3), np.uint8)
  with pytest.raises(ValueError, match=r"'whiten'.*'scale', 'standardize'"):
    data.normalize(x, data.DATASETS['cifar10'], 'whiten')
  with pytest.raises(ValueError, match='3 channels'):
    data.normalize(x, ((0.1, 0.2), (0.3, 0.4)), 'standardize')
  with pytest.raises(ValueError, match='DatasetSpec'):
    data.normalize(x, 0.5, 'standardize')


# --------------------------------------------------------- random_crop_flip


def _distinct_images(batch: int, height: int = 6, width: int = 5, chans=2):
  """Float images whose values are unique and nonzero (padding is zero)."""
  values = np.random.default_rng(0).permutation(batch * height * width * chans)
  return (values + 1).astype(np.float32).reshape(batch, height, width, chans)


@pytest.mark.parametrize('crop', [False, True])
def test_flip_only_gives_image_or_mirror(crop):
  images = _distinct_images(32)
  out = np.asarray(data.random_crop_flip(
      jax.random.key(1), images, pad=0, flip=True, crop=crop))
  flipped = []
  for image, result in zip(images, out):
    if np.array_equal(result, image):
      flipped.append(False)
    else:
      np.testing.assert_array_equal(result, image[:, ::-1])
      flipped.append(True)
  assert any(flipped) and not all(flipped)


def test_crop_is_translated_window_of_padded_image():
  pad = 4
  images = _distinct_images(32)
  out = np.asarray(jax.jit(functools.partial(
      data.random_crop_flip, pad=pad, flip=False))(jax.random.key(2), images))
  _, height, width, _ = images.shape
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offsets = []
  for index in range(len(images)):
    found = [
        (dy, dx)
        for dy in range(2 * pad + 1)
        for dx in range(2 * pad + 1)
        if np.array_equal(
            out[index], padded[index, dy:dy + height, dx:dx + width])
    ]
    assert len(found) == 1, f'example {index}: windows matching {found}'
    offsets.append(found[0])
  dy, dx = offsets[0]
  np.testing.assert_array_equal(
      out[0], padded[0, dy:dy + height, dx:dx + width])
  assert len(set(offsets)) > 1  # independent offsets per example


def test_random_crop_flip_determinism_dtype_and_jit():
  images = np.random.default_rng(3).integers(
      0, 256, (16, 8, 8, 3), dtype=np.uint8)
  fn = functools.partial(data.random_crop_flip, pad=2)
  first = fn(jax.random.key(5), images)
  again = jax.jit(fn)(jax.random.key(5), images)
  other = fn(jax.random.key(6), images)
  assert first.dtype == jnp.uint8 and first.shape == images.shape
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)
  assert not np.array_equal(first, images)


def test_random_crop_flip_errors():
  key = jax.random.key(0)
  with pytest.raises(ValueError, match='pad'):
    data.random_crop_flip(key, np.zeros((2, 4, 4, 1)), pad=-1)
  with pytest.raises(ValueError, match=r'\(B, H, W, C\)'):
    data.random_crop_flip(key, np.zeros((4, 4, 1)))


# -------------------------------------------------------- epoch_permutation


def test_epoch_permutation():
  perm = np.asarray(data.epoch_permutation(0, 0, 1000))
  np.testing.assert_array_equal(np.sort(perm), np.arange(1000))
  np.testing.assert_array_equal(
      perm, np.asarray(data.epoch_permutation(0, 0, 1000)))
  next_epoch = np.asarray(data.epoch_permutation(0, 1, 1000))
  other_seed = np.asarray(data.epoch_permutation(1, 0, 1000))
  assert not np.array_equal(perm, next_epoch)
  assert not np.array_equal(perm, other_seed)
  assert not np.array_equal(perm, np.arange(1000))
  with pytest.raises(ValueError, match='n must be'):
    data.epoch_permutation(0, 0, -1)
