"""Kafka Connect: connector configs for a Connect cluster, its REST API, and the CLI."""
