"""The hand-written network layers jaxbio used before Flax, for a side-by-side speed check."""
