"""The fleet: devices as they report themselves, signing keys, deployments and rollouts."""
