"""The engine: images and geometry, pyramid, sampling, transform models and bases, the registration
driver, the joint-product interface with its clear backend, evaluation. Knows nothing of parties,
processes or networks."""
