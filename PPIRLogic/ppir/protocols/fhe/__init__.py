"""The FHE protocol: CKKS (Microsoft SEAL through TenSEAL's ``sealapi``), two parties, no dealer."""
