"""The procedure document's operations, below the notebooks' steps: triage, the sequence
reset, dropping a migration's objects and recovering them, the full restore, diffing and
repairing chosen tables from a backup, verifying the application."""
