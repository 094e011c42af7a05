"""Helpers of the PPIR Slicer module that need no Slicer: running ``ppir`` as a subprocess."""
