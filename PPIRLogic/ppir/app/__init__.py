"""The application: the job on files, the roles as programs, outputs, report, progress, snapshot,
sample data and synthesis, the command line, and the settings contract with the Slicer module."""
