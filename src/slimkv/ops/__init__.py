"""Stateless math. Nothing here owns parameters or imports from layers/models."""
