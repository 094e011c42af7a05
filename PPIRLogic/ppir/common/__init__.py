"""The bottom layer: errors, whole-or-nothing output files, process usage, the version. Imports nothing of ppir."""
