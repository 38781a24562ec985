"""Tables, timings and figures shared by the CLI, the benchmarks and the tutorials."""
