"""The reconstruction attack: what an honest-but-curious moving party can learn about the fixed image J.

``record``  wraps the moving party's real backend and records everything it receives or knows;
``solve``   solves for J per pyramid level from the recorded products (minimum norm, own-image prior);
``pairs``   synthetic pairs whose fixed image carries small details the moving image lacks;
``measure`` prints the attack's tables: ``python -m ppir_bench.attack.measure baseline|policy``.
The test suite runs it (Testing/test_reconstruction.py); ``ppir bench --suite privacy`` reports it.
"""
