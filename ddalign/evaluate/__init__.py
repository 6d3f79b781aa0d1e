"""The evaluator: prompt sets, batched generation, judges, metrics and the delta-debugging oracle."""
