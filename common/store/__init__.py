"""The state store: jobs, tasks, events and provider slots in SQLite or PostgreSQL."""
