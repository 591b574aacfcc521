"""steer stage."""
