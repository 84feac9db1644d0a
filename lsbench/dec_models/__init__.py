"""DEC models: the deep-equilibrium solver, the DEC canonicalizer, latent canonicalization and baselines."""
