"""Deployment: SavedModel and TFLite exports verified in their runtimes, their benchmark, and a development server."""
