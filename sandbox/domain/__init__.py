"""Pure domain types and rules: outcomes, errors, calls, rollouts, environments, containers,
hosts and the messages between processes. Nothing here does I/O, so it is what unit tests
reach first, and both the API and the workers import it.
"""
