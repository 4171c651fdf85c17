"""Camera actions: quantization of trajectories (QCM), prompts, and the keyboard grammar."""
from yume_jax.camera.keyboard import VALID_TOKENS, format_keys, parse_keys, parse_step
from yume_jax.camera.qcm import (ALL_ACTIONS, INFERENCE_SPEED_SENTENCE, KEYS, MOUSE, NEGATIVE_PROMPT, STYLES, Action, Segment, Speed, prompt, quantize,
                                 relative_motion, segment, speed, speed_sentences)

__all__ = ["ALL_ACTIONS", "INFERENCE_SPEED_SENTENCE", "KEYS", "MOUSE", "NEGATIVE_PROMPT", "STYLES", "VALID_TOKENS", "Action", "Segment", "Speed", "format_keys",
           "parse_keys", "parse_step", "prompt", "quantize", "relative_motion", "segment", "speed", "speed_sentences"]
