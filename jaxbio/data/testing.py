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


@contextlib.contextmanager
def mock_data(num_examples: int):
  """``tfds.testing.mock_data`` with batched reads repaired (see above).

  ``MockPolicy.USE_CODE`` builds the dataset info from the TFDS code, with no
  metadata files and no TensorFlow (the pip package ships no metadata folder,
  so ``AUTO`` would fall back to it anyway). Under it, ``data_dir`` is ignored,
  split names are not validated and every split has ``num_examples`` records.
  """
  with tfds.testing.mock_data(
      num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE
  ), mock.patch.object(mocking, '_getitems', _fake_getitems):
    yield
