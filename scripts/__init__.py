"""Tools that prove and tune the service: load generators, benchmarks, the capacity plan, the launcher."""
