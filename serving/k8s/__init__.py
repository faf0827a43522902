"""Kubernetes: render the Helm chart, validate it with real engines, deploy with the official client."""
