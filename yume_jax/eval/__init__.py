"""Evaluation: camera motion from pixels, the sandbox benchmark, metrics, the harness and its reports."""
