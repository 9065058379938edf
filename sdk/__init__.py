"""eoembed: Earth-observation embedding products (GeoParquet 1.1 + STAC)."""
