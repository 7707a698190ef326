"""Kubernetes: RayJob manifests for runs (`python -m ray_jobs.k8s render`), offline manifest checks (`check`)."""
