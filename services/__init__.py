"""wlex: the services of the logistics trading exchange, and the launcher that runs them."""
