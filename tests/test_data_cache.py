"""Tests for the decoded-dataset cache of jaxbio.data.load."""

from __future__ import annotations

import logging
import os
import shutil
import threading
from unittest import mock

from absl import logging as absl_logging
import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.testing import mocking

from jaxbio import data
from jaxbio.data import pipeline
from jaxbio.data import testing as data_testing

_SPLIT = 'train[:500]'


def _real_dir() -> str:
  """The shared TFDS directory, or skips the test if it is absent."""
  root = data.shared_data_dir()
  if root is None:
    pytest.skip('no <repo>/../shared/data/tfds with prepared MNIST datasets')
  return root


@pytest.fixture(scope='module')
def fresh() -> data.ArrayDataset:
  """``_SPLIT`` of MNIST decoded without the cache."""
  return data.load('mnist', _SPLIT, _real_dir(), cache=False)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> str:
  path = tmp_path / 'cache'
  monkeypatch.setenv('JAXBIO_CACHE_DIR', str(path))
  monkeypatch.setattr(pipeline, '_UNUSABLE_CACHE_DIRS', set())
  return str(path)


@pytest.fixture
def decodes(monkeypatch) -> list[int]:
  """Counts calls of the TFDS decode path (one entry per decoded record)."""
  calls = []
  real = pipeline._decode_all

  def counting(source, spec, chunk_size):
    calls.append(len(source))
    return real(source, spec, chunk_size)

  monkeypatch.setattr(pipeline, '_decode_all', counting)
  return calls


def _no_decode(monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError('decoded although the cache should have hit')
  monkeypatch.setattr(pipeline, '_decode_all', fail)


def _entries(cache_dir: str) -> list[str]:
  return sorted(os.listdir(cache_dir)) if os.path.isdir(cache_dir) else []


def _assert_same(ds: data.ArrayDataset, ref: data.ArrayDataset):
  for got, want in ((ds.images, ref.images), (ds.labels, ref.labels)):
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
  assert ds.spec is ref.spec and ds.split == ref.split


def _linked_copy(tmp_path) -> str:
  """A data dir whose MNIST json files are copies and records are symlinks."""
  src = os.path.join(_real_dir(), 'mnist', '3.0.1')
  dst = tmp_path / 'tfds' / 'mnist' / '3.0.1'
  dst.mkdir(parents=True)
  for name in os.listdir(src):
    if name.endswith('.json') or name.endswith('.txt'):
      shutil.copy2(os.path.join(src, name), dst / name)
    else:
      os.symlink(os.path.join(src, name), dst / name)
  return str(tmp_path / 'tfds')


# ---------------------------------------------------------------- hits/misses


def test_second_load_is_a_cache_hit_with_identical_arrays(
    cache_dir, fresh, monkeypatch):
  first = data.load('mnist', _SPLIT, _real_dir())
  _assert_same(first, fresh)
  (entry,) = _entries(cache_dir)
  assert entry.startswith('mnist-train_500_-') and entry.endswith('.npz')
  assert not os.path.exists(os.path.join(_real_dir(), entry))
  _no_decode(monkeypatch)
  second = data.load('mnist', _SPLIT, _real_dir(), chunk_size=7)
  _assert_same(second, fresh)
  assert second.images.flags.writeable and second.labels.flags.writeable


def test_other_split_or_data_dir_misses(cache_dir, decodes, tmp_path, fresh):
  data.load('mnist', _SPLIT, _real_dir())
  data.load('mnist', _SPLIT, _real_dir())
  assert decodes == [500]
  data.load('mnist', 'train[:200]', _real_dir())
  assert decodes == [500, 200]
  copy = data.load('mnist', _SPLIT, _linked_copy(tmp_path))
  assert decodes == [500, 200, 500]
  _assert_same(copy, fresh)
  assert len(_entries(cache_dir)) == 3


def test_changed_source_file_misses(cache_dir, decodes, tmp_path, fresh):
  root = _linked_copy(tmp_path)
  data.load('mnist', _SPLIT, root)
  data.load('mnist', _SPLIT, root)
  assert decodes == [500]
  info = os.path.join(root, 'mnist', '3.0.1', 'dataset_info.json')
  stat = os.stat(info)
  os.utime(info, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
  _assert_same(data.load('mnist', _SPLIT, root), fresh)
  assert decodes == [500, 500]
  assert len(_entries(cache_dir)) == 2


def test_removed_dataset_is_not_found_despite_cache(cache_dir, tmp_path):
  root = _linked_copy(tmp_path)
  data.load('mnist', _SPLIT, root)
  assert _entries(cache_dir)
  shutil.rmtree(os.path.join(root, 'mnist'))
  with pytest.raises(data.DatasetNotFoundError, match='tfds build mnist'):
    data.load('mnist', _SPLIT, root)
  with pytest.raises(data.DatasetNotFoundError):
    data.load('cifar10', 'train', str(tmp_path))


def test_bad_split_still_raises_with_cache(cache_dir):
  data.load('mnist', _SPLIT, _real_dir())
  with pytest.raises(ValueError, match=r"\['test', 'train'\]"):
    data.load('mnist', 'validation', _real_dir())


# ------------------------------------------------------------- broken caches


def _corrupt(path: str, how: str):
  if how == 'truncated':
    with open(path, 'r+b') as f:
      f.truncate(os.path.getsize(path) // 2)
  elif how == 'garbage':
    with open(path, 'wb') as f:
      f.write(b'not a zip file at all')
  elif how == 'flipped_byte':
    with open(path, 'r+b') as f:
      f.seek(os.path.getsize(path) // 2)
      byte = f.read(1)
      f.seek(-1, os.SEEK_CUR)
      f.write(bytes([byte[0] ^ 0xFF]))
  elif how == 'wrong_shape':
    with np.load(path) as npz:
      key = npz['key']
    np.savez(path, images=np.zeros((500, 28, 28, 3), np.uint8),
             labels=np.zeros((500,), np.int32), key=key)
  elif how == 'wrong_dtype':
    with np.load(path) as npz:
      arrays = dict(npz)
    arrays['labels'] = arrays['labels'].astype(np.int64)
    np.savez(path, **arrays)
  else:
    raise ValueError(how)


@pytest.mark.parametrize(
    'how',
    ['truncated', 'garbage', 'flipped_byte', 'wrong_shape', 'wrong_dtype'])
def test_corrupt_cache_file_is_rebuilt_with_warning(
    how, cache_dir, decodes, fresh, caplog, monkeypatch):
  data.load('mnist', _SPLIT, _real_dir())
  (entry,) = _entries(cache_dir)
  path = os.path.join(cache_dir, entry)
  _corrupt(path, how)
  with caplog.at_level(logging.WARNING):
    rebuilt = data.load('mnist', _SPLIT, _real_dir())
  _assert_same(rebuilt, fresh)
  assert decodes == [500, 500]
  assert any(r.levelno == logging.WARNING and 'unreadable dataset cache' in
             r.getMessage() and entry in r.getMessage() for r in caplog.records)
  assert _entries(cache_dir) == [entry]
  _no_decode(monkeypatch)
  _assert_same(data.load('mnist', _SPLIT, _real_dir()), fresh)


@pytest.mark.parametrize('how', ['parent_is_file', 'read_only_dir'])
def test_unusable_cache_dir_warns_once_and_loads(
    how, tmp_path, monkeypatch, decodes, fresh, caplog):
  monkeypatch.setattr(pipeline, '_UNUSABLE_CACHE_DIRS', set())
  if how == 'parent_is_file':
    (tmp_path / 'file').write_text('')
    cache = tmp_path / 'file' / 'cache'
  else:
    if os.geteuid() == 0:
      pytest.skip('permissions do not restrict root')
    cache = tmp_path / 'ro'
    cache.mkdir()
    cache.chmod(0o500)
  monkeypatch.setenv('JAXBIO_CACHE_DIR', str(cache))
  try:
    with caplog.at_level(logging.WARNING):
      for _ in range(2):
        _assert_same(data.load('mnist', _SPLIT, _real_dir()), fresh)
  finally:
    if how == 'read_only_dir':
      cache.chmod(0o700)
  assert decodes == [500, 500]
  warnings = [r for r in caplog.records
              if 'cannot write the dataset cache' in r.getMessage()]
  assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
  if how == 'read_only_dir':
    assert not os.listdir(cache)


def test_concurrent_builders_get_correct_arrays_and_leave_no_temp_files(
    cache_dir, fresh, monkeypatch):
  real = pipeline._decode_all
  barrier = threading.Barrier(2, timeout=60)

  def decode_then_wait(source, spec, chunk_size):
    out = real(source, spec, chunk_size)
    barrier.wait()  # Both threads have decoded: both will write the entry.
    return out

  monkeypatch.setattr(pipeline, '_decode_all', decode_then_wait)
  results, errors = [None, None], []

  def build(i):
    try:
      results[i] = data.load('mnist', _SPLIT, _real_dir())
    except Exception as err:  # pylint: disable=broad-except
      errors.append(err)

  threads = [threading.Thread(target=build, args=(i,)) for i in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=120)
  assert not errors
  for ds in results:
    _assert_same(ds, fresh)
  (entry,) = _entries(cache_dir)
  assert entry.endswith('.npz')
  _no_decode(monkeypatch)
  _assert_same(data.load('mnist', _SPLIT, _real_dir()), fresh)


def test_entry_appears_only_when_complete(cache_dir, monkeypatch, fresh):
  real_savez = np.savez
  seen = []

  def watching_savez(file, **arrays):
    real_savez(file, **arrays)
    seen.append(_entries(cache_dir))  # Written, not yet moved into place.

  monkeypatch.setattr(pipeline.np, 'savez', watching_savez)
  data.load('mnist', _SPLIT, _real_dir())
  (during,) = seen
  (entry,) = _entries(cache_dir)
  assert len(during) == 1 and during[0] != entry
  assert during[0].startswith('.') and during[0].endswith('.tmp')


def test_failed_write_leaves_no_temp_file(cache_dir, monkeypatch, fresh):
  def broken_savez(*args, **kwargs):
    raise OSError('disk full')
  monkeypatch.setattr(pipeline.np, 'savez', broken_savez)
  _assert_same(data.load('mnist', _SPLIT, _real_dir()), fresh)
  assert _entries(cache_dir) == []


# --------------------------------------------------------- disabling, config


@pytest.mark.parametrize('how', ['env_off', 'keyword'])
def test_cache_can_be_disabled(how, cache_dir, monkeypatch, decodes):
  kwargs = {}
  if how == 'env_off':
    monkeypatch.setenv('JAXBIO_CACHE_DIR', 'off')
  else:
    kwargs['cache'] = False
  for _ in range(2):
    data.load('mnist', _SPLIT, _real_dir(), **kwargs)
  assert decodes == [500, 500]
  assert _entries(cache_dir) == [] and not os.path.exists('off')


def test_cache_dir_precedence(monkeypatch, tmp_path):
  monkeypatch.setenv('JAXBIO_CACHE_DIR', str(tmp_path / 'explicit'))
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
  assert data.resolve_cache_dir() == str(tmp_path / 'explicit')
  for off in ('off', 'OFF', 'none', 'false', '0'):
    monkeypatch.setenv('JAXBIO_CACHE_DIR', off)
    assert data.resolve_cache_dir() is None
  monkeypatch.setenv('JAXBIO_CACHE_DIR', '')
  assert data.resolve_cache_dir() == str(tmp_path / 'xdg' / 'jaxbio' /
                                         'datasets')
  monkeypatch.delenv('JAXBIO_CACHE_DIR')
  monkeypatch.setenv('XDG_CACHE_HOME', 'relative/ignored')
  home = os.path.join(os.path.expanduser('~'), '.cache', 'jaxbio', 'datasets')
  assert data.resolve_cache_dir() == home
  monkeypatch.delenv('XDG_CACHE_HOME')
  assert data.resolve_cache_dir() == home


def test_mocked_loads_are_not_cached(cache_dir, fresh):
  with data_testing.mock_data(5):
    ds = data.load('mnist', 'train', _real_dir())
    again = data.load('mnist', 'train', _real_dir())
  assert ds.images.shape == again.images.shape == (5, 28, 28, 1)
  # USE_FILES reads the real dataset info, so the real version dir is
  # fingerprinted; the mocked records must still not reach the cache.
  with tfds.testing.mock_data(
      num_examples=5, policy=tfds.testing.MockPolicy.USE_FILES,
      data_dir=_real_dir()), mock.patch.object(
          mocking, '_getitems', data_testing._fake_getitems):
    data.load('mnist', 'train[:5]', _real_dir())
  assert _entries(cache_dir) == []
  real = data.load('mnist', 'train[:5]', _real_dir())
  np.testing.assert_array_equal(real.images, fresh.images[:5])


# ------------------------------------------------------------------- logging


def _opencv_records(caplog) -> list[logging.LogRecord]:
  return [r for r in caplog.records
          if r.getMessage().startswith('OpenCV is not installed')]


def test_opencv_warning_is_silenced_only_while_decoding(monkeypatch, caplog):
  root = _real_dir()
  # TFDS logs it with log_first_n; reset absl's counters so it can show again.
  monkeypatch.setattr(absl_logging, '_log_counter_per_token', {})
  with caplog.at_level(logging.WARNING):
    data.load('mnist', 'train[:10]', root, cache=False)
  assert not _opencv_records(caplog)
  monkeypatch.setattr(absl_logging, '_log_counter_per_token', {})
  with caplog.at_level(logging.WARNING):
    tfds.data_source('mnist', split='train[:10]', data_dir=root)[0]
  # Control: outside load the warning still appears (unless OpenCV exists).
  try:
    import cv2  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    assert len(_opencv_records(caplog)) == 1
  assert not logging.getLogger('absl').filters
