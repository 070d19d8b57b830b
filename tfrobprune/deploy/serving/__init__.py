"""A development server speaking TF Serving's gRPC and REST protocols for an export directory (docs/serving.md)."""
