"""The API's shapes as pydantic models: what a request may carry and what an answer holds.

One source for two things: handlers validate request bodies with these models, and the
OpenAPI document is generated from them (``entrypoints/openapi.py``).
"""
