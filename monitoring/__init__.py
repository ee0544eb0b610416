"""Production monitoring: drift of production windows against the transfer-set reference."""
