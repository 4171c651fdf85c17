"""Named configurations: model presets (real sizes and tiny ones for tests)."""
