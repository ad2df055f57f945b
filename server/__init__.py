"""fedpriv server package."""
