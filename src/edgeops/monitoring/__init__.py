"""Monitoring: drift and skew metrics over binned distributions."""
