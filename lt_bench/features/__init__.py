"""Feature extraction into Parquet and the feature store."""
