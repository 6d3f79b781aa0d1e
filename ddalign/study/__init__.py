"""Studies across several models; `refusals`: the refusal-pattern study (`ddalign refusals`)."""
