"""Training library: the loop (:mod:`.trainer`) runs a task (:mod:`.task`; the flow/MVDT task is
:mod:`.tasks.flow`) built from shared pieces: state and optimizers (:mod:`.state`), step helpers
(:mod:`.step`), objective, checkpoints, data and metrics."""
