"""Code that runs inside each rank."""
