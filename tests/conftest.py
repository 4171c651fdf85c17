"""Test setup: 8 virtual CPU devices (multi-device tests), float32 matmuls at full precision."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# trainer subprocesses with --compile_cache cache every program (yume_jax/train/trainer.py init_jax), so a
# relaunch or resume in a test compiles nothing
os.environ.setdefault("YUME_JAX_CACHE_MIN_SECS", "0")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


def pytest_collection_modifyitems(config, items):
    """Modules with a test marked ``slow`` run first (their tests kept together and in order), so that
    with parallel workers (``-n auto``) the few long trainer/subprocess tests start at once instead of
    ending the run alone on one worker. Which tests run is unchanged."""
    heavy = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module.__name__ not in heavy)  # stable: order kept within each group


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def fast_compiles():
    """XLA's optimisations off for a module whose time is compiles (``pytestmark =
    pytest.mark.usefixtures("fast_compiles")``); restored after the module."""
    import jax
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)
