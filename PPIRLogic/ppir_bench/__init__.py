"""PPIR's benchmarks, outside the core package: they import ``ppir``, never the reverse.

``engine``: the engine against SimpleITK and the per-product cost of the private protocols;
``suite``: the quick and full suites (every protocol, sampling and transform model, peers, scaling);
``report``: their tables and plots; ``paper``: the published figures they are compared with.
``ppir bench`` imports this package on use.
"""
