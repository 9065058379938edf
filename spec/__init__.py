"""The eoembed product specification: prose, JSON Schemas and examples, shipped as package data."""
