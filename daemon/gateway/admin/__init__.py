"""The admin API: training on demand, training runs, the adapter registry (scope `admin`)."""
