"""stuisession."""
