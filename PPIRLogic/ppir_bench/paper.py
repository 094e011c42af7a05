"""The published figures PPIR is compared with (Taiello et al., MedIA 2024), written once."""

# The paper's per-party, per-iteration figures (Taiello et al., MedIA 2024, Tables 2 and 3).
PAPER = {
    "table_2": {"title": "Table 2: affine, 2D whole-body PET, 1260x1090",
                "rows": {"mpc full": {"s": 0.13, "mb": 1.54}, "mpc urs": {"s": 0.02, "mb": 0.20},
                         "fhe urs": {"s": 2.55, "mb": 0.06}}},
    "table_3": {"title": "Table 3: B-spline, 2D brain MRI, 121x121",
                "rows": {"mpc full": {"s": 0.63, "mb": 28.98, "mb_fixed": 21.47}}},
}


def table_2_row(protocol: str, sampling: str) -> dict | None:
    """The paper's Table 2 figures (s and MB per party per iteration) for a protocol and sampling, if it has them."""
    return PAPER["table_2"]["rows"].get(f"{protocol} {sampling}")
