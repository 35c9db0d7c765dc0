"""Developer and operator tools (benchmarks, fault injection): not part of the service package."""
