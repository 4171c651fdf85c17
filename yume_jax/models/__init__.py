"""Model definitions: the Wan DiT and Yume's extensions."""
