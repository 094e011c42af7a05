"""Secure two-party computation of the joint product with a dealer (additive sharing over Z_2^64)."""
