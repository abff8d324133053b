# MLflow ingestion (single local writer): see issue 5.
