"""The VAE, its scorer, training and the model registry."""
