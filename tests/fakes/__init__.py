"""Fakes with the real things' contracts, for unit tests of the orchestration without Docker or
Celery: an in-memory backend (held to tests/contract/ like the Docker backend), an in-memory
dispatcher, a clock that moves when told, and `FakeHost`, one sandbox host's worker side
running in-process."""
