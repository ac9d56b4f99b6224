"""Image-classification data: dataset specs, loading, and on-device transforms.

Loading happens once, on the host: :func:`load` reads a prepared TFDS dataset
(ArrayRecord format) through ``tfds.data_source`` and decodes it, in bounded
chunks, into one ``uint8`` image array and one ``int32`` label array. Everything
after that runs on the accelerator as pure, jit-able ``jax.numpy`` code:
:func:`epoch_permutation` for shuffling, :func:`random_crop_flip` for
augmentation and :func:`normalize` for scaling.

A dataset too large for host memory (ImageNet at 224 x 224: its spec says
``streamed``) keeps only its labels in memory; its images are a
:class:`StreamedImages`, which decodes the records an index names, from disk,
when it is indexed (a thread pool decodes and resizes), and the trainer feeds
it batch by batch (``data_placement='host'``).

Decoding MNIST takes seconds to minutes, so :func:`load` caches the decoded
arrays: one uncompressed ``.npz`` file per (dataset, prepared version, split,
data directory) in ``$JAXBIO_CACHE_DIR``, else
``$XDG_CACHE_HOME/jaxbio/datasets``, else ``~/.cache/jaxbio/datasets`` (see
:func:`resolve_cache_dir`), never in the data directory. The file name holds a
hash of that key and of the size and mtime of every file of the prepared
version, so a rebuilt dataset misses the cache. Disable caching with
``JAXBIO_CACHE_DIR=off`` or ``load(..., cache=False)``. A corrupt cache file is
rebuilt, and an unwritable cache directory only costs the speed-up (both with a
warning).

Example::

    from jaxbio import data
    train = data.load('mnist', 'train[:90%]', data.shared_data_dir())
    perm = data.epoch_permutation(seed=0, epoch=3, n=len(train.labels))
    x = data.normalize(train.images[perm[:128]], train.spec, 'standardize')
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import io
import json
import logging as std_logging
import os
import pathlib
import re
import tempfile
from typing import Any, Iterator, NamedTuple, Sequence
from unittest import mock

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from jaxbio.registry import DATASETS, NORMALIZE_MODES, DatasetSpec  # noqa: F401  (re-exported)

_DEFAULT_CHUNK_SIZE = 4096

CACHE_DIR_ENV = 'JAXBIO_CACHE_DIR'
_CACHE_OFF_VALUES = ('off', 'none', 'false', '0')
# Bump when the cache file layout or the decoding changes, so old files miss.
_CACHE_FORMAT = 1
_CACHE_ARRAYS = ('images', 'labels', 'key')
# Cache directories already warned about as unusable; warn once per directory.
_UNUSABLE_CACHE_DIRS: set[str] = set()


class DatasetNotFoundError(ValueError):
  """The requested dataset is not prepared in the data directory."""


class ArrayDataset(NamedTuple):
  """One split of a dataset: its labels in host memory, and its images.

  Attributes:
    images: ``uint8`` array of shape ``(N, H, W, C)``, fully decoded; for a
      streamed dataset (``spec.streamed``), a :class:`StreamedImages` of that
      shape, which decodes the records it is indexed with.
    labels: ``int32`` array of shape ``(N,)``.
    spec: The dataset's :class:`DatasetSpec`.
    split: The TFDS split string that was loaded, e.g. ``'train[:90%]'``.
  """

  images: np.ndarray
  labels: np.ndarray
  spec: DatasetSpec
  split: str


# ----------------------------------------------------------------- locations


def get_spec(name: str) -> DatasetSpec:
  """Looks up a dataset's spec by name.

  Args:
    name: A key of :data:`DATASETS`.

  Returns:
    The :class:`DatasetSpec`.

  Raises:
    ValueError: If ``name`` is not a known dataset.
  """
  if name not in DATASETS:
    raise ValueError(
        f'unknown dataset {name!r}; valid choices: {sorted(DATASETS)}')
  return DATASETS[name]


def resolve_data_dir(data_dir: str | None) -> str:
  """Picks the TFDS data directory.

  Precedence: the explicit argument, then ``$TFDS_DATA_DIR``, then the TFDS
  default (``~/tensorflow_datasets``). An empty string counts as unset, so a
  config default of ``''`` falls through. ``~`` is expanded.

  Args:
    data_dir: Explicit directory, or ``None``/``''`` for the fallbacks.

  Returns:
    The directory to read from.
  """
  if data_dir:
    return os.path.expanduser(os.fspath(data_dir))
  env = os.environ.get('TFDS_DATA_DIR')
  if env:
    return os.path.expanduser(env)
  return os.path.join(os.path.expanduser('~'), 'tensorflow_datasets')


def shared_data_dir() -> str | None:
  """Returns ``<repo>/../shared/data/tfds`` if that directory exists.

  ``<repo>`` is the directory that contains the ``jaxbio`` package.

  Returns:
    The absolute path as a string, or ``None`` if it does not exist.
  """
  repo = pathlib.Path(__file__).resolve().parents[2]
  path = repo.parent / 'shared' / 'data' / 'tfds'
  return str(path) if path.is_dir() else None


def resolve_cache_dir() -> str | None:
  """Picks the directory that caches decoded datasets for :func:`load`.

  Precedence: ``$JAXBIO_CACHE_DIR``, then ``$XDG_CACHE_HOME/jaxbio/datasets``
  (if ``$XDG_CACHE_HOME`` is an absolute path), then
  ``~/.cache/jaxbio/datasets``. An empty ``$JAXBIO_CACHE_DIR`` counts as unset;
  ``JAXBIO_CACHE_DIR=off`` (or ``none``, ``false``, ``0``) disables the cache.
  The directory is not created here.

  Returns:
    The absolute cache directory, or ``None`` if caching is disabled.
  """
  env = os.environ.get(CACHE_DIR_ENV, '').strip()
  if env.lower() in _CACHE_OFF_VALUES:
    return None
  if env:
    return os.path.abspath(os.path.expanduser(env))
  xdg = os.environ.get('XDG_CACHE_HOME', '')
  base = xdg if os.path.isabs(xdg) else os.path.join(
      os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'jaxbio', 'datasets')


# ------------------------------------------------------------------- loading


def load(
    name: str,
    split: str,
    data_dir: str | None = None,
    *,
    chunk_size: int = _DEFAULT_CHUNK_SIZE,
    cache: bool = True,
) -> ArrayDataset:
  """Loads one split of a prepared TFDS dataset into host memory.

  The decoded arrays are cached in :func:`resolve_cache_dir` (one uncompressed
  ``.npz`` file per dataset, prepared version, split and data directory), so a
  second load of the same split skips decoding. The cache key includes the size
  and mtime of every file of the prepared version: rebuilding the dataset
  invalidates it. The dataset is still opened, and all errors below raised, on
  a cache hit. A corrupt cache file is ignored with a warning and rebuilt; an
  unusable cache directory gives one warning and no caching. Disable the cache
  with ``cache=False`` or ``JAXBIO_CACHE_DIR=off``.

  Args:
    name: A key of :data:`DATASETS`.
    split: A TFDS split string; slices such as ``'train[:90%]'``,
      ``'train[-5000:]'`` or ``'train+test'`` are supported.
    data_dir: Data directory, resolved by :func:`resolve_data_dir`.
    chunk_size: Records decoded per ``__getitems__`` call; bounds the memory
      held in decoded Python objects at any time.
    cache: Whether to read and write the decoded-array cache.

  Returns:
    The decoded :class:`ArrayDataset`.

  Raises:
    ValueError: If ``name``, ``split`` or ``chunk_size`` is invalid, or the
      dataset is stored in a format without random access.
    DatasetNotFoundError: If the dataset is not prepared in the directory.
  """
  spec = get_spec(name)
  if spec.streamed:
    return load_streamed(name, split, data_dir, cache=cache)
  if not isinstance(split, str) or not split:
    raise ValueError(
        f'split must be a non-empty TFDS split string such as '
        f"{spec.train_split!r} or '{spec.train_split}[:90%]', got {split!r}")
  if not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f'chunk_size must be a positive int, got {chunk_size!r}')
  root = resolve_data_dir(data_dir)
  source = _open_source(spec, split, root)
  path, key = (
      _cache_entry(spec, split, root, source) if cache else (None, None))
  cached = _read_cache(path, key, spec, len(source)) if path else None
  if cached is not None:
    images, labels = cached
  else:
    with _without_opencv_warning():
      images, labels = _decode_all(source, spec, chunk_size)
    if path:
      _write_cache(path, key, images, labels)
  return ArrayDataset(images=images, labels=labels, spec=spec, split=split)


class StreamedImages:
  """A split's images, decoded from disk when indexed: ``images[idx]``.

  It stands in for the ``(N, H, W, C)`` uint8 array of a split too large to
  decode into memory. Indexing with an integer array of any shape (or a
  slice) reads those records, decodes their encoded images on a thread pool,
  resizes them to the spec's ``(H, W)`` if the spec says ``resize`` (bilinear,
  with antialiasing, both sides: the aspect ratio is not kept) and returns a
  uint8 array of shape ``idx.shape + (H, W, C)``. Converting the whole split
  with ``np.asarray`` is refused: it would not fit in memory.

  Attributes:
    shape: ``(N, H, W, C)``.
    dtype: ``uint8``.
  """

  def __init__(self, source: Sequence[Any], spec: DatasetSpec, threads: int | None = None):
    self._source, self._spec = source, spec
    self.shape = (len(source), *spec.image_shape)
    self.dtype = np.dtype(np.uint8)
    self.ndim = len(self.shape)
    self._threads = threads or min(32, len(os.sched_getaffinity(0)) if hasattr(
        os, 'sched_getaffinity') else (os.cpu_count() or 1))
    self._pool: concurrent.futures.ThreadPoolExecutor | None = None

  def __len__(self) -> int:
    return self.shape[0]

  def __array__(self, dtype=None, copy=None):
    raise TypeError(
        f'the images of {self._spec.name!r} are streamed from disk (about '
        f'{self.shape[0] * int(np.prod(self.shape[1:])) / 2**30:.0f} GiB decoded); '
        'index them with the rows you need, e.g. images[rows]')

  def __getitem__(self, idx) -> np.ndarray:
    n = len(self)
    if isinstance(idx, slice):
      idx = np.arange(n)[idx]
    if isinstance(idx, tuple):
      raise TypeError('StreamedImages takes one integer index array or a slice (whole '
                      f'images), got a tuple {idx!r}')
    idx = np.asarray(idx)
    if idx.size == 0:
      idx = idx.astype(np.int64)
    if idx.dtype.kind not in 'iu':
      raise TypeError(f'StreamedImages takes integer indices or a slice, got {idx.dtype}')
    flat = idx.reshape(-1).astype(np.int64)
    bad = flat[(flat < -n) | (flat >= n)]
    if bad.size:
      raise IndexError(f'index {int(bad[0])} out of range for {n} images (valid: '
                       f'{-n}..{n - 1})')
    flat = np.where(flat < 0, flat + n, flat)
    out = np.empty((flat.size, *self._spec.image_shape), np.uint8)
    if flat.size:
      records = self._source.__getitems__([int(i) for i in flat])
      if self._pool is None:
        self._pool = concurrent.futures.ThreadPoolExecutor(self._threads)
      def decode_into(i):
        out[i] = decode_image(records[i]['image'], self._spec)
      list(self._pool.map(decode_into, range(flat.size)))
    return out.reshape(idx.shape + self._spec.image_shape)


def decode_image(image: Any, spec: DatasetSpec) -> np.ndarray:
  """One record's image as a uint8 ``spec.image_shape`` array.

  Args:
    image: Encoded image bytes (JPEG, PNG), or an already decoded array.
    spec: The dataset's spec: its image shape, and whether to resize to it.

  Returns:
    The ``(H, W, C)`` uint8 image.

  Raises:
    ValueError: If the image does not have the spec's shape and the spec
      does not resize.
  """
  height, width, channels = spec.image_shape
  if isinstance(image, (bytes, bytearray)):
    pil = Image.open(io.BytesIO(image))
  else:
    array = np.asarray(image)
    if array.shape == spec.image_shape and array.dtype == np.uint8:
      return array
    pil = Image.fromarray(array.squeeze(-1) if array.ndim == 3 and array.shape[-1] == 1
                          else array)
  pil = pil.convert('L' if channels == 1 else 'RGB')
  if pil.size != (width, height):
    if not spec.resize:
      raise ValueError(
          f'dataset {spec.name!r} decoded to an image of size {pil.size[1]}x{pil.size[0]}; '
          f'expected {height}x{width}')
    pil = pil.resize((width, height), Image.Resampling.BILINEAR)
  return np.asarray(pil, np.uint8).reshape(spec.image_shape)


def load_streamed(
    name: str, split: str, data_dir: str | None = None, *, cache: bool = True
) -> ArrayDataset:
  """Opens one split with its labels in memory and its images streamed.

  The labels are read in one pass over the records without decoding the
  images (and cached like :func:`load`'s arrays); the images are a
  :class:`StreamedImages` over the same records. :func:`load` calls this for
  a dataset whose spec says ``streamed``; it works for any dataset.

  Args:
    name: A key of :data:`DATASETS`.
    split: A TFDS split string.
    data_dir: Data directory, resolved by :func:`resolve_data_dir`.
    cache: Whether to read and write the label cache.

  Returns:
    An :class:`ArrayDataset` whose ``images`` is a :class:`StreamedImages`.
  """
  spec = get_spec(name)
  if not isinstance(split, str) or not split:
    raise ValueError(
        f'split must be a non-empty TFDS split string such as '
        f"{spec.train_split!r} or '{spec.train_split}[:90%]', got {split!r}")
  root = resolve_data_dir(data_dir)
  source = _open_source(spec, split, root, skip_image_decoding=True)
  path, key = _cache_entry(spec, split, root, source, labels_only=True) if cache else (None, None)
  labels = _read_cache(path, key, spec, len(source), labels_only=True) if path else None
  if labels is None:
    labels = np.empty((len(source),), np.int32)
    for start in range(0, len(source), _DEFAULT_CHUNK_SIZE):
      stop = min(start + _DEFAULT_CHUNK_SIZE, len(source))
      labels[start:stop] = _stack_labels(source.__getitems__(list(range(start, stop))), spec)
    if path:
      _write_cache(path, key, None, labels)
  return ArrayDataset(images=StreamedImages(source, spec), labels=labels, spec=spec, split=split)


def _open_source(spec: DatasetSpec, split: str, root: str,
                 skip_image_decoding: bool = False) -> Sequence[Any]:
  """Opens a TFDS data source, turning failures into one-line errors.

  With ``skip_image_decoding``, records hold their images' encoded bytes.
  """
  decoders = {'image': tfds.decode.SkipDecoding()} if skip_image_decoding else None
  try:
    source = tfds.data_source(
        spec.name, split=split, data_dir=root, download=False, decoders=decoders)
    len(source)  # Split slicing is resolved lazily; surface its errors here.
    return source
  except Exception as err:  # pylint: disable=broad-except
    infos = _prepared_infos(spec.name, root)
    if not infos:
      raise DatasetNotFoundError(_not_found_message(spec.name, root)) from None
    if not any(i.get('fileFormat') == 'array_record' for i in infos):
      raise ValueError(_wrong_format_message(spec.name, root, infos)) from None
    if isinstance(err, ValueError):
      splits = sorted({s['name'] for i in infos for s in i.get('splits', [])})
      reason = str(err).strip().splitlines()[0] if str(err).strip() else ''
      raise ValueError(
          f'cannot read split {split!r} of dataset {spec.name!r} ({reason}); '
          f'valid splits: {splits}, optionally sliced like '
          f"'{spec.train_split}[:90%]'") from None
    raise


def _prepared_infos(name: str, root: str) -> list[dict[str, Any]]:
  """Returns the ``dataset_info.json`` contents of each prepared version."""
  infos = []
  versions = epath.Path(root).joinpath(name)
  for path in sorted(versions.glob('*/dataset_info.json')):
    try:
      infos.append(json.loads(path.read_text()))
    except (OSError, ValueError):
      continue
  return infos


def _not_found_message(name: str, root: str) -> str:
  return (
      f'dataset {name!r} not found in {root}; prepare it with '
      f'`tfds build {name} --data_dir={root} --file_format=array_record` '
      '(or set --config.dataset.data_dir / $TFDS_DATA_DIR)')


def _wrong_format_message(name: str, root: str, infos: list[dict]) -> str:
  formats = sorted({i.get('fileFormat', 'tfrecord') for i in infos})
  return (
      f'dataset {name!r} in {root} is stored as {formats}, but loading needs '
      'random access, i.e. file format array_record; rebuild it with '
      f'`tfds build {name} --data_dir={root} --file_format=array_record`')


def _decode_all(
    source: Sequence[Any], spec: DatasetSpec, chunk_size: int
) -> tuple[np.ndarray, np.ndarray]:
  """Decodes every record of ``source`` into preallocated arrays."""
  n = len(source)
  images = np.empty((n, *spec.image_shape), np.uint8)
  labels = np.empty((n,), np.int32)
  for start in range(0, n, chunk_size):
    stop = min(start + chunk_size, n)
    records = source.__getitems__(list(range(start, stop)))
    images[start:stop] = _stack_images(records, spec)
    labels[start:stop] = _stack_labels(records, spec)
  return images, labels


class _OpenCvWarningFilter(std_logging.Filter):
  """Drops TFDS's "OpenCV is not installed ... Defaulting to PIL" warning."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return not str(record.msg).startswith('OpenCV is not installed.')


@contextlib.contextmanager
def _without_opencv_warning() -> Iterator[None]:
  """Silences only that TFDS warning while decoding: PIL is intended here."""
  absl_logger = std_logging.getLogger('absl')
  log_filter = _OpenCvWarningFilter()
  absl_logger.addFilter(log_filter)
  try:
    yield
  finally:
    absl_logger.removeFilter(log_filter)


def _stack_images(records: Sequence[dict], spec: DatasetSpec) -> np.ndarray:
  """Stacks decoded images, checking them against the spec."""
  images = np.stack([np.asarray(r['image']) for r in records])
  if images.shape[1:] != spec.image_shape or images.dtype != np.uint8:
    raise ValueError(
        f'dataset {spec.name!r} decoded to images of shape {images.shape[1:]} '
        f'and dtype {images.dtype}; expected {spec.image_shape} and uint8')
  return images


def _stack_labels(records: Sequence[dict], spec: DatasetSpec) -> np.ndarray:
  """Stacks decoded labels, checking they lie in ``[0, num_classes)``."""
  labels = np.asarray([int(r['label']) for r in records], np.int64)
  bad = labels[(labels < 0) | (labels >= spec.num_classes)]
  if bad.size:
    raise ValueError(
        f'dataset {spec.name!r} has label {int(bad[0])} outside '
        f'[0, {spec.num_classes})')
  return labels.astype(np.int32)


# --------------------------------------------------------------------- cache


def _cache_entry(
    spec: DatasetSpec, split: str, root: str, source: Any, labels_only: bool = False
) -> tuple[str | None, str | None]:
  """Returns the cache file path and key for one load, or ``(None, None)``.

  ``None`` when caching is disabled, the source is a test mock, or the prepared
  version directory is not a local directory that can be fingerprinted.
  """
  cache_dir = resolve_cache_dir()
  info = getattr(source, 'dataset_info', None)
  if (cache_dir is None or info is None
      or isinstance(getattr(source, 'data_source', None), mock.Mock)):
    return None, None
  version_dir = os.path.abspath(os.fspath(info.data_dir))
  files = _fingerprint(version_dir)
  if not files:
    return None, None
  key = json.dumps({
      'format': _CACHE_FORMAT,
      'name': spec.name,
      'version': str(info.version),
      'split': split,
      'data_dir': os.path.abspath(root),
      'version_dir': version_dir,
      'files': files,
      **({'labels_only': True} if labels_only else {}),
  }, sort_keys=True)
  digest = hashlib.sha256(key.encode()).hexdigest()[:20]
  prefix = re.sub(r'[^A-Za-z0-9._-]+', '_',
                  f'{spec.name}-{split}' + ('-labels' if labels_only else ''))
  return os.path.join(cache_dir, f'{prefix}-{digest}.npz'), key


def _fingerprint(version_dir: str) -> list[list[Any]] | None:
  """``[relative path, size, mtime_ns]`` of every file under ``version_dir``."""
  if not os.path.isdir(version_dir):
    return None
  files = []
  try:
    for parent, dirs, names in os.walk(version_dir):
      dirs.sort()
      for file_name in sorted(names):
        path = os.path.join(parent, file_name)
        stat = os.stat(path)
        rel = os.path.relpath(path, version_dir)
        files.append([rel, stat.st_size, stat.st_mtime_ns])
  except OSError:
    return None
  return files or None


def _read_cache(
    path: str, key: str, spec: DatasetSpec, n: int, labels_only: bool = False
) -> Any:
  """Loads a cache file, or returns ``None`` (warning if it is unusable).

  Returns ``(images, labels)``, or only the labels with ``labels_only``.
  """
  if not os.path.exists(path):
    return None
  arrays = ('labels', 'key') if labels_only else _CACHE_ARRAYS
  try:
    with np.load(path, allow_pickle=False) as npz:
      if sorted(npz.files) != sorted(arrays):
        raise ValueError(f'arrays {sorted(npz.files)}')
      if str(npz['key']) != key:
        raise ValueError('key mismatch')
      images = None if labels_only else npz['images']
      labels = npz['labels']
    if not labels_only and (images.dtype != np.uint8
                            or images.shape != (n, *spec.image_shape)):
      raise ValueError(f'images {images.dtype}{list(images.shape)}')
    if labels.dtype != np.int32 or labels.shape != (n,):
      raise ValueError(f'labels {labels.dtype}{list(labels.shape)}')
    if n and (labels.min() < 0 or labels.max() >= spec.num_classes):
      raise ValueError('labels out of range')
  except Exception as err:  # pylint: disable=broad-except
    logging.warning(
        'jaxbio data: ignoring unreadable dataset cache file %s (%s: %s); '
        'decoding again', path, type(err).__name__, err)
    return None
  return labels if labels_only else (images, labels)


def _write_cache(
    path: str, key: str, images: np.ndarray | None, labels: np.ndarray
) -> None:
  """Writes a cache file atomically (``images=None``: labels only).

  Warns once per directory on failure.
  """
  cache_dir = os.path.dirname(path)
  tmp = None
  try:
    os.makedirs(cache_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=cache_dir, prefix=f'.{os.path.basename(path)}.', suffix='.tmp')
    with os.fdopen(fd, 'wb') as f:
      arrays = {} if images is None else {'images': images}
      np.savez(f, **arrays, labels=labels, key=np.array(key))
    os.replace(tmp, path)
    tmp = None
  except Exception as err:  # pylint: disable=broad-except
    if cache_dir not in _UNUSABLE_CACHE_DIRS:
      _UNUSABLE_CACHE_DIRS.add(cache_dir)
      logging.warning(
          'jaxbio data: cannot write the dataset cache in %s (%s: %s); '
          'loading without it (set %s to another directory, or to "off")',
          cache_dir, type(err).__name__, err, CACHE_DIR_ENV)
  finally:
    if tmp is not None:
      with contextlib.suppress(OSError):
        os.remove(tmp)


# ---------------------------------------------------------- device transforms


def normalize(
    images: jax.Array,
    spec_or_mean_std: DatasetSpec | tuple[Any, Any] | None,
    mode: str,
) -> jax.Array:
  """Maps pixel values (0-255 units, uint8 or float) to float32 inputs.

  Args:
    images: ``(..., C)`` array of pixels in ``[0, 255]`` units.
    spec_or_mean_std: A :class:`DatasetSpec`, or a ``(mean, std)`` pair of
      per-channel values in ``[0, 1]`` units (length 1 or ``C``); ignored (may
      be ``None``) for ``mode='scale'``.
    mode: ``'scale'`` gives ``x / 255``; ``'standardize'`` gives
      ``(x / 255 - mean) / std``.

  Returns:
    A float32 array of the same shape.

  Raises:
    ValueError: On an unknown ``mode`` or malformed mean/std.
  """
  if mode not in NORMALIZE_MODES:
    raise ValueError(
        f'unknown normalize mode {mode!r}; valid choices: '
        f'{list(NORMALIZE_MODES)}')
  x = jnp.asarray(images).astype(jnp.float32) / 255.0
  if mode == 'scale':
    return x
  mean, std = _mean_std(spec_or_mean_std, x.shape[-1])
  return (x - mean) / std


def _mean_std(
    spec_or_mean_std: Any, channels: int
) -> tuple[jax.Array, jax.Array]:
  """Extracts per-channel float32 mean and std vectors."""
  if isinstance(spec_or_mean_std, DatasetSpec):
    pair = (spec_or_mean_std.mean, spec_or_mean_std.std)
  else:
    pair = spec_or_mean_std
  try:
    mean, std = pair
  except (TypeError, ValueError):
    raise ValueError(
        'spec_or_mean_std must be a DatasetSpec or a (mean, std) pair, got '
        f'{spec_or_mean_std!r}') from None
  mean = jnp.atleast_1d(jnp.asarray(mean, jnp.float32))
  std = jnp.atleast_1d(jnp.asarray(std, jnp.float32))
  for label, value in (('mean', mean), ('std', std)):
    if value.ndim != 1 or value.shape[0] not in (1, channels):
      raise ValueError(
          f'{label} has shape {value.shape}; valid choices: (1,) or '
          f'({channels},) for images with {channels} channels')
  return mean, std


def random_crop_flip(
    key: jax.Array,
    images: jax.Array,
    *,
    pad: int = 4,
    flip: bool = True,
    crop: bool = True,
) -> jax.Array:
  """Random translation (pad-and-crop) and horizontal flip, per example.

  Each image is zero-padded by ``pad`` pixels on every side and a window of the
  original size is cut at an independent uniform offset; independently, each
  image is mirrored left-right with probability 1/2. Deterministic for a given
  ``key``; jit-able; keeps the dtype (uint8 or float).

  Args:
    key: A JAX PRNG key.
    images: ``(B, H, W, C)`` array.
    pad: Non-negative padding in pixels (``0`` disables translation).
    flip: Whether to apply random horizontal flips.
    crop: Whether to apply random translations.

  Returns:
    Array of the same shape and dtype as ``images``.

  Raises:
    ValueError: If ``images`` is not 4-D or ``pad`` is not a non-negative int.
  """
  images = jnp.asarray(images)
  if images.ndim != 4:
    raise ValueError(
        f'images must have shape (B, H, W, C), got shape {images.shape}')
  if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
    raise ValueError(f'pad must be a non-negative int, got {pad!r}')
  crop_key, flip_key = jax.random.split(key)
  if crop and pad > 0:
    images = _random_crop(crop_key, images, pad)
  if flip:
    images = _random_flip(flip_key, images)
  return images


def _random_crop(key: jax.Array, images: jax.Array, pad: int) -> jax.Array:
  """Zero-pads by ``pad`` and cuts an independent random window per image."""
  batch, height, width, channels = images.shape
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offsets = jax.random.randint(key, (batch, 2), 0, 2 * pad + 1)

  def crop_one(image, offset):
    start = (offset[0], offset[1], 0)
    return jax.lax.dynamic_slice(image, start, (height, width, channels))

  return jax.vmap(crop_one)(padded, offsets)


def _random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
  """Mirrors each image left-right with independent probability 1/2."""
  mask = jax.random.bernoulli(key, 0.5, (images.shape[0],))
  return jnp.where(mask[:, None, None, None], images[:, :, ::-1, :], images)


def epoch_permutation(seed: int, epoch: int, n: int) -> jax.Array:
  """A shuffling order of ``range(n)``, fixed by ``(seed, epoch)``.

  Args:
    seed: Base random seed.
    epoch: Epoch index, folded into the seed's key.
    n: Number of examples (a static Python int).

  Returns:
    An int32 array holding a permutation of ``0..n-1``.

  Raises:
    ValueError: If ``n`` is not a non-negative int.
  """
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
    raise ValueError(f'n must be a non-negative int, got {n!r}')
  key = jax.random.fold_in(jax.random.key(seed), epoch)
  return jax.random.permutation(key, int(n))
