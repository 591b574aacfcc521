"""behaviors stage."""
