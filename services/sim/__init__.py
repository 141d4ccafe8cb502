"""Simulated shippers and carriers that trade on a running exchange over its public API
(`wlex demo`, `wlex sim run`).

Pure parts: pricing.py (distances and going rates from the reference table),
population.py (participants and lanes from a seed), orders.py (load and offer bodies).
Adapters: api.py (REST with retries), shipper.py, carrier.py, run.py (the orchestra),
cli.py (`wlex sim run`)."""
