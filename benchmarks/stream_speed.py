"""Images per second through jaxbio's streamed-dataset decoder (ImageNet's path).

A streamed split (``imagenet2012``) keeps only its labels in memory and decodes
each chunk's images when the trainer asks for them, on a thread pool, while the
previous chunk trains. This times that decoding, :class:`jaxbio.data.StreamedImages`
indexing a chunk of rows, on JPEGs of ImageNet's typical size (500 x 375,
quality 90, a smooth random image with noise, held in memory, so disk reads are
not counted), resized to 224 x 224, for 1 and for all threads::

    python -m benchmarks.stream_speed --images=512
"""

from __future__ import annotations

import io
import os
import time

from absl import app, flags
import numpy as np
from PIL import Image

from jaxbio import data

_IMAGES = flags.DEFINE_integer("images", 512, "Images decoded per timed call.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls (median reported).")


class _InMemorySource:
  """Records like ``tfds.data_source``'s with image decoding skipped: encoded bytes."""

  def __init__(self, jpegs):
    self.jpegs = jpegs

  def __len__(self):
    return len(self.jpegs)

  def __getitems__(self, keys):
    return [{"image": self.jpegs[k], "label": k % 1000} for k in keys]


def _jpegs(n: int, seed: int = 0) -> list[bytes]:
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    coarse = rng.integers(0, 256, (12, 16, 3), np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((500, 375), Image.Resampling.BICUBIC))
    image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=90)
    out.append(buf.getvalue())
  return out


def main(argv):
  del argv
  n = _IMAGES.value
  source = _InMemorySource(_jpegs(n))
  spec = data.DATASETS["imagenet2012"]
  kib = np.mean([len(j) for j in source.jpegs]) / 1024
  print(f"{n} JPEGs of 500x375 ({kib:.0f} KiB each) -> {spec.image_shape}, "
        f"{os.cpu_count()} CPUs, median of {_REPEATS.value} calls")
  print("| threads | ms per image | images/s |")
  print("|---|---|---|")
  rows = np.random.default_rng(1).permutation(n)
  for threads in sorted({1, os.cpu_count() or 1}):
    images = data.StreamedImages(source, spec, threads=threads)
    images[rows[:8]]  # starts the pool
    times = []
    for _ in range(_REPEATS.value):
      t = time.perf_counter()
      images[rows]
      times.append(time.perf_counter() - t)
    s = float(np.median(times))
    print(f"| {threads} | {1e3 * s / n:.2f} | {n / s:.0f} |")


if __name__ == "__main__":
  app.run(main)
