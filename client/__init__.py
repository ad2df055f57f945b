"""fedpriv client package."""
