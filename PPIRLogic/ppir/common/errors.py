"""Errors that PPIR reports to users as one clear message (exit code 2 on the command line)."""


class PPIRError(Exception):
    """A problem with the user's input or environment, worded for the user."""

    exit_code = 2
