"""The lowest floor: checkpoint I/O (:mod:`~yume_jax.core.tensors`, :mod:`~yume_jax.core.checkpoint`) and
parameter naming (:mod:`~yume_jax.core.params`). Imports nothing of yume_jax above it."""
from yume_jax.core.checkpoint import (FORMAT_VERSION, fill, make_meta, open_checkpoint, place_with,  # noqa: F401
                                      save_module, write_checkpoint)
from yume_jax.core.tensors import (JAX_META, JAX_PARAMS, ArraySource, CheckpointError, ConversionError,  # noqa: F401
                                   TensorSource, load_safetensors, open_source, save_safetensors)
