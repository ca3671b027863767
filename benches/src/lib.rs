//! Workload generation shared by the benchmarks.
