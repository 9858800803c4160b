"""PostgreSQL backend that starts the embedded server on the process's first connection."""
