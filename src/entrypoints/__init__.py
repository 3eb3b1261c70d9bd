"""Entrypoints: the Starlette API and WebSocket server, the CLI, workers, composition root."""
