"""HTTP API: parse, authenticate, call one service method, map the outcome to HTTP."""
