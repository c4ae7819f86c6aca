"""Selection traces recorded by `alisa accuracy --trace-out` (data only)."""
