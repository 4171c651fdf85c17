"""Training tasks (:class:`yume_jax.train.task.Task`): ``flow`` (rectified flow + MVDT on the Yume DiT)."""
