"""syncguard detector: score identity-connector syncs against learned normal behaviour."""

__version__ = "0.1.0"
