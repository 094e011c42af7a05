"""The reconstruction attack of issue 14: what an honest-but-curious moving party can learn about J.

``record``  wraps the moving party's real backend and records everything it receives or knows;
``solve``   solves for J per pyramid level from the recorded products (minimum norm, own-image prior);
``protect`` scratch protections (noise in normalised units, a per-level budget) as backend wrappers,
            the per-product sensitivity and the session's privacy account;
``measure`` the command that prints the tables of docs/privacy-measurements.md.
"""
