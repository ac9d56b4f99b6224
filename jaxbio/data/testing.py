"""Test helpers for code that loads data through :mod:`jaxbio.data`.

:func:`mock_data` lets tests (yours and jaxbio's) run the real loading code on
generated records, with no dataset on disk, no network and no TensorFlow.
"""

from __future__ import annotations

import contextlib
from unittest import mock

import tensorflow_datasets as tfds
from tensorflow_datasets.testing import mocking


def _fake_getitems(record_keys, generator, serialized=False):
  """Replacement for ``mocking._getitems`` without a ``self`` argument.

  In TFDS 4.9.10, ``mock_data`` assigns ``functools.partial(_getitems, ...)``
  to the mocked ArrayRecord reader's ``__getitems__``. ``MagicMock`` does not
  treat ``__getitems__`` as a magic method, so the partial is stored as a plain
  instance attribute, ``self`` is never bound and every batched read fails with
  ``TypeError: missing ... 'record_keys'`` (``__getitem__`` works). This keeps
  the rest of the mock intact and serves the same generated examples.
  """
  assert not serialized, 'jaxbio reads decoded examples only'
  return [generator[key] for key in record_keys]


_real_fake_data_components = mocking._get_fake_data_components  # pylint: disable=protected-access


def _decoded_fake_data_components(decoders, features, deserialize_method=None):
  """Serves decoded examples even when the reader asks for undecoded images.

  With a decoder such as ``SkipDecoding`` (how :func:`jaxbio.data.load_streamed`
  reads a streamed dataset), the mock encodes its generated examples with
  TensorFlow, which jaxbio does not need. The generated images are served
  decoded instead; :func:`jaxbio.data.decode_image` takes arrays as well as
  encoded bytes.
  """
  del decoders
  return _real_fake_data_components(None, features, deserialize_method)


@contextlib.contextmanager
def mock_data(num_examples: int):
  """``tfds.testing.mock_data`` with batched reads repaired (see above).

  Images are always served decoded (see :func:`_decoded_fake_data_components`).

  ``MockPolicy.USE_CODE`` builds the dataset info from the TFDS code, with no
  metadata files and no TensorFlow (the pip package ships no metadata folder,
  so ``AUTO`` would fall back to it anyway). Under it, ``data_dir`` is ignored,
  split names are not validated and every split has ``num_examples`` records.
  """
  with tfds.testing.mock_data(
      num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE
  ), mock.patch.object(mocking, '_getitems', _fake_getitems), mock.patch.object(
      mocking, '_get_fake_data_components', _decoded_fake_data_components):
    yield
