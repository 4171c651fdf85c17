"""Data: Sekai readers, the sandbox world, Grain input pipelines and the latent dataset."""
