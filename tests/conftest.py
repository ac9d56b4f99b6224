"""Test-session settings shared by every test file."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _dataset_cache(tmp_path_factory):
  """One decoded-dataset cache for the whole session (shared by the xdist workers).

  The tests never read or write the user's own cache; subprocesses inherit the
  variable. The first test to load a split decodes it; the rest hit the cache.
  """
  root = tmp_path_factory.getbasetemp()
  shared = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root
  os.environ["JAXBIO_CACHE_DIR"] = str(shared / "jaxbio-dataset-cache")
  yield
