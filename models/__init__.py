"""Persistence and the rules about stored things. Only this package imports the driver."""
