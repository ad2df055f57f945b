"""fedpriv simulations package."""
