"""Sources: each knows its tracer and the shared Arrow schemas, nothing downstream."""
