"""The admin HTTP server: health, readiness and a JSON view of live state."""
