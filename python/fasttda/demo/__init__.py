"""The embedded hallucination-tracing benchmark (`fasttda demo`)."""
