"""Tables and figures computed from the run files (never from MLflow)."""
