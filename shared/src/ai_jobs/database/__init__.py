"""Database bootstrap: embedded PostgreSQL and the migration runner."""
