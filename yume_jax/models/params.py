"""Parameter pytrees <-> flat checkpoint names: :mod:`yume_jax.core.params` (moved there so that every
family's loader and the converter share it); ``fill`` is the old name of :func:`map_named`."""
from yume_jax.core.params import (STACKED_PREFIXES, flatten, is_stacked, layer_count, map_named,  # noqa: F401
                                  path_name, to_checkpoint, unstacked_names)

fill = map_named
