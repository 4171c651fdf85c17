"""Time Travel Sampling (TTS), alone or with the SDE step (TTS-SDE); spec/yume.md "Sampling".

The public code (fastvideo/sample/sample_tts.py), with travel length l = 2, interval 2 and an unused
repeat r = 1, does at every step i with i % interval == 0:

    v_i = v(x_i, sigma_i);  y = step(x_i, v_i, sigma_i -> sigma_{i+1})              (the normal step)
    for j = i+1 .. i+l-1:   v_j = v(y, sigma_j);  y = step(y, v_j, sigma_j -> sigma_{j+1})   (look ahead)
    x_{i+1} = step(x_i, v_{i+l-1}, sigma_i -> sigma_{i+1})       (redo step i with the look-ahead velocity)

i.e. l - 1 extra evaluations every ``interval`` steps (l = 2, interval 2: N + N/2 evaluations, ~1.5x).

Here, exactly, with N steps and d_i = min(l - 1, N - 2 - i) (as in the public code, the look-ahead never
evaluates at the last sigma_{N-1}):

- a step i is a travel step iff i % interval == 0 and d_i >= 1; other steps are plain steps;
- travel length l: the look-ahead visits sigma_{i+1} .. sigma_{i+d_i} (d_i evaluations), taking the normal
  step after each, and returns the velocity at the farthest point, sigma_{i+d_i};
- repeat r (unused in the public code) iterates that look-ahead-and-redo as a fixed-point iteration: pass 1
  starts its look-ahead from step(x_i, v_i), pass k > 1 starts it from step(x_i, v*_{k-1}), the redo with
  the previous pass's look-ahead velocity; step i is then taken from x_i with v*_r. r = 1 is the public
  code; for l = 2 and r -> infinity it converges to the implicit Euler step x_{i+1} = x_i + h v(x_{i+1}).
  Cost: N + r * sum_i d_i evaluations (``evaluations``).

Differences from the public code, all deliberate: (1) during the look-ahead the frozen history is set to the
sigma of each visited point (the public code re-noises it to sigma_{i+l} while the chunk is at
sigma_{i+1}); (2) a step with d_i = 0 is a plain step (the public code, at i >= N - 2, redoes it with a
stale velocity left over from the previous travel step); (3) in TTS-SDE the redo is the SDE step too, with the same
noise draw as step i (the public code redoes step i as an Euler step); every visited step j uses the noise
draw of step j, fold_in(key, j).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from yume_jax.sampling import euler, registry, sde
from yume_jax.sampling.loop import denoise, evaluate, step_key


def evaluations(steps: int, travel: int = 2, interval: int = 2, repeat: int = 1) -> int:
    """Number of velocity evaluations of one TTS run (each is one CFG evaluation under guidance)."""
    extra = sum(min(travel - 1, steps - 2 - i) for i in range(0, steps, interval) if steps - 2 - i >= 1)
    return steps + repeat * extra


def check(travel: int, interval: int, repeat: int) -> None:
    if int(travel) != travel or travel < 2:
        raise ValueError(f"TTS travel length must be an integer >= 2 (1 means no look-ahead: use euler/sde), "
                         f"got {travel!r}")
    if int(interval) != interval or interval < 1:
        raise ValueError(f"TTS interval must be an integer >= 1, got {interval!r}")
    if int(repeat) != repeat or repeat < 1:
        raise ValueError(f"TTS repeat must be an integer >= 1, got {repeat!r}")


def sample(velocity, x, sigmas, *, step=euler.step, travel: int = 2, interval: int = 2, repeat: int = 1,
           state=(), key=None, frozen=None, pre=None, on_step=None):
    """TTS with ``step(x, v, sigma, sigma_next, key)`` (``euler.step`` or a bound ``sde.step``) and a stateful
    ``velocity`` (loop.py; every evaluation, look-ahead included, gets the index of the step it visits)."""
    check(travel, interval, repeat)
    sigmas = jnp.asarray(sigmas, jnp.float32)
    n = sigmas.shape[0] - 1

    def settle(y, sigma):
        return y if frozen is None else frozen.apply(y, sigma)

    def look_ahead(i, x, v, k, state):
        depth = jnp.minimum(travel - 1, n - 2 - i)

        def one_pass(_, carry):
            v_redo, state = carry
            y = settle(step(x, v_redo, sigmas[i], sigmas[i + 1], k).astype(x.dtype), sigmas[i + 1])

            def visit(m, carry):
                y, _, state = carry
                j = i + 1 + m
                v_j, state = evaluate(velocity, y, sigmas[j], j, state, frozen)
                y = settle(step(y, v_j, sigmas[j], sigmas[j + 1], step_key(key, j)).astype(y.dtype), sigmas[j + 1])
                return y, v_j, state

            _, v_new, state = jax.lax.fori_loop(0, depth, visit, (y, v_redo, state))
            return v_new, state

        return jax.lax.fori_loop(0, repeat, one_pass, (v, state))

    def update(i, x, k, state):
        v, state = evaluate(velocity, x, sigmas[i], i, state, frozen)
        travels = (i % interval == 0) & (i < n - 2)
        v, state = jax.lax.cond(travels, lambda: look_ahead(i, x, v, k, state), lambda: (v, state))
        return step(x, v, sigmas[i], sigmas[i + 1], k), state

    return denoise(update, x, sigmas, state=state, key=key, frozen=frozen, pre=pre, on_step=on_step)


def sample_sde(velocity, x, sigmas, *, key, eta: float = 0.3, last: str = "spec", **kw):
    """TTS-SDE: TTS whose every step (normal, look-ahead and redo) is the SDE step."""
    if key is None:
        raise ValueError("TTS-SDE needs a PRNG key")
    if last not in sde.LAST_STEP:
        raise ValueError(f"last must be one of {sde.LAST_STEP}, got {last!r}")
    return sample(velocity, x, sigmas, step=functools.partial(sde.step, eta=eta, last=last), key=key, **kw)


def _evaluations(config) -> int:
    t = config.tts
    return evaluations(config.steps, t.travel, t.interval, t.repeat)


@registry.register("tts", evaluations=_evaluations)
def _build(config, velocity, sigmas, **kw):
    t = config.tts
    return lambda x, pre=None: sample(velocity, x, sigmas, travel=t.travel, interval=t.interval, repeat=t.repeat,
                                      pre=pre, **kw)


@registry.register("tts-sde", stochastic=True, evaluations=_evaluations)
def _build_sde(config, velocity, sigmas, **kw):
    t = config.tts
    return lambda x, pre=None: sample_sde(velocity, x, sigmas, eta=config.eta, last=config.sde_last,
                                          travel=t.travel, interval=t.interval, repeat=t.repeat, pre=pre, **kw)
