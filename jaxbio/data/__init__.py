"""Datasets: TFDS loading on the host, jit-able preprocessing on device."""

from __future__ import annotations

from jaxbio.data.pipeline import ArrayDataset
from jaxbio.data.pipeline import DATASETS
from jaxbio.data.pipeline import DatasetNotFoundError
from jaxbio.data.pipeline import DatasetSpec
from jaxbio.data.pipeline import decode_image
from jaxbio.data.pipeline import epoch_permutation
from jaxbio.data.pipeline import get_spec
from jaxbio.data.pipeline import load
from jaxbio.data.pipeline import load_streamed
from jaxbio.data.pipeline import NORMALIZE_MODES
from jaxbio.data.pipeline import normalize
from jaxbio.data.pipeline import random_crop_flip
from jaxbio.data.pipeline import resolve_cache_dir
from jaxbio.data.pipeline import resolve_data_dir
from jaxbio.data.pipeline import shared_data_dir
from jaxbio.data.pipeline import StreamedImages

__all__ = [
    'ArrayDataset',
    'DATASETS',
    'DatasetNotFoundError',
    'DatasetSpec',
    'NORMALIZE_MODES',
    'StreamedImages',
    'decode_image',
    'epoch_permutation',
    'get_spec',
    'load',
    'load_streamed',
    'normalize',
    'random_crop_flip',
    'resolve_cache_dir',
    'resolve_data_dir',
    'shared_data_dir',
]
