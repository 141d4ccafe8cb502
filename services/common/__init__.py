"""What every wlex service shares: settings, the envelope codec, Kafka and PostgreSQL adapters,
metrics, and the service runner. Nothing here knows a service's domain rules."""
