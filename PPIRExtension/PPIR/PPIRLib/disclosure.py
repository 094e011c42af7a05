"""What a run sends to whom, in words, for the confirmation before anything leaves the computer.

A summary of docs/security.md ("What each party learns") for one party's settings.
"""
from __future__ import annotations

from .jobs import RunSettings

SHARED = {"transform": "the resulting transform", "warped": "your moving image warped onto the fixed grid",
          "none": "nothing of the result"}


def disclosure(settings: RunSettings, masked: bool = False) -> str:
    """The plain-language list of what this party's run sends, to whom, and what never leaves
    (``masked``: this party registers within a mask of its own)."""
    role, protocol = settings.role, settings.protocol.upper()
    if role == "local":
        return "Nothing leaves this computer: both volumes are here and the run is in the clear."
    if role == "dealer":
        return (f"This computer, as the MPC dealer, listens on {settings.address}. It sends both parties random "
                "masks only and learns that a session took place, the number of samples and of channels. "
                "It never receives image data.")
    if role == "fixed":
        content = ("your image masked by the dealer's random values (uniformly random to the other party)"
                   if protocol == "MPC" else
                   "your image encrypted under a key that stays here (no secret key is sent)")
        return (f"This computer (party 2) listens on {settings.address} and sends the moving party:\n"
                "- the fixed image's geometry (size, spacing, origin, direction);\n"
                "- per level, a power of two above its largest intensity, and per sample set the sum of squared "
                "intensities;\n"
                f"- {content}.\n"
                + ("- which of the moving party's samples lie inside your mask (the mask itself is never sent; "
                   "at most the share of each level your disclosure policy allows).\n" if masked else "")
                + "Your image's voxel values are never sent in clear form. See docs/security.md.")
    indices = ("the sample indices: with 'gms' sampling they outline your anatomy on the fixed grid "
               "(use 'urs' to avoid this)" if settings.sampling == "gms" else
               "the sample indices (drawn without looking at either image)" if settings.sampling == "urs" else
               "the sample indices (all voxels)")
    mask_note = (", drawn inside your mask: they show where it falls on the fixed grid (the mask itself is never "
                 "sent)" if masked else "")
    products = ("secret shares of your image's gradient terms (uniformly random to each receiver)" if protocol == "MPC"
                else "masked, re-randomised ciphertexts of the joint products")
    dealer = (f"- to the dealer at {settings.dealer}: the number of samples and of channels per product only.\n"
              if protocol == "MPC" else "")
    return (f"This computer (party 1) connects to the fixed party at {settings.address} and sends it:\n"
            f"- the session settings ({protocol}, {settings.transform}, levels {settings.levels});\n"
            f"- {indices}{mask_note};\n"
            f"- {products};\n"
            f"- at the end, {SHARED[settings.share_result]}.\n"
            f"{dealer}"
            "Your image's voxel values are never sent in clear form. See docs/security.md.")
