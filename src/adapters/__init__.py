"""Adapters: embedded (SQLite, in-process) and production (PostgreSQL, Redis, RabbitMQ)
implementations of the application's ports, plus readers of market-data files."""
